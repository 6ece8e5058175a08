"""GIF: token-head cost vs the number of identities N (beside the full softmax and partial FC), and the
cost of one code-vector homogenisation step vs N.

    python bench/gif_head_scaling.py [--ns 1e3,1e4,1e5,1e6] [--vocab 64] [--homog-ns 1e4,1e5,1e6,1e7]
                                     [--homog-dim 64] [--homog-steps 20] [--device cpu]

Heads (embedding 512, batch 128, fp32, SGD momentum; one subprocess per row, as ``bench/head_scaling.py``
whose child it reuses, so peaks do not mix): ``full`` softmax (ArcFace), ``pfc s=0.1`` (partial FC sampling
10 % of the rows, one process), ``gif`` (:class:`fr.gif.token_head.TokenHead`, ``l = ceil(log_K N)`` tokens
over ``K = --vocab``, unique codes ``[N, l]``, no margin). ``peak`` is the RSS high-water mark of the timed
steps minus the RSS before the head was built.

Homogenisation (one subprocess per N): ``N x d`` random unit vectors in a memory-mapped ``.npy`` (disk), random
neighbour lists (the per-step cost does not depend on their quality; the one-off kNN is not timed here), then
``--homog-steps`` steps of :func:`fr.gif.homogenise.homogenise` (batch 1024, k 10, m 32). Reported: step time,
the device bytes a step touches (``peak_step_bytes``; on CUDA also ``torch.cuda.max_memory_allocated``), and
the process RSS peak, which includes the touched pages of the memory-mapped matrix (file-backed, evictable).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.head_scaling as hs  # noqa: E402
from bench.common import MIB, REPO_ROOT, format_table, machine_info, proc_status_kib, write_json  # noqa: E402

GIF = hs.HeadSpec("gif", "gif")
HEADS = (hs.HeadSpec("full", "full"), hs.HeadSpec("pfc s=0.1", "partial_fc", 1, 0.1), GIF)


def code_length(n: int, vocab: int) -> int:
    return max(1, math.ceil(math.log(n) / math.log(vocab) - 1e-9))


def unique_codes(n: int, length: int, vocab: int):
    """Row ``i``: the base-``vocab`` digits of ``i`` (unique; the clustering is not part of the head cost)."""
    import torch

    i = torch.arange(n)
    return torch.stack([(i // vocab ** j) % vocab for j in range(length)], 1)


def _build_with_gif(vocab: int):
    original = hs.build_head

    def build(spec, rows, dim):
        if spec.kind != "gif":
            return original(spec, rows, dim)
        import torch

        from fr.gif.lambdas import lambda_pattern
        from fr.gif.token_head import TokenHead

        length = code_length(rows, vocab)
        head = TokenHead(unique_codes(rows, length, vocab), vocab, dim, lambda_pattern("uniform", length))
        head.sampled_classes = torch.arange(length * vocab)  # logit columns, read by hs.run_child
        return head, torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return build


def head_child(job: dict) -> dict:
    hs.build_head = _build_with_gif(job.pop("vocab"))  # run_child builds its heads through this name
    spec = hs.HeadSpec(**job.pop("spec"))
    return hs.run_child(spec, **job)


def homog_child(job: dict) -> dict:
    import numpy as np
    import torch

    from fr.gif.homogenise import HomogeniseConfig, homogenise

    torch.set_num_threads(job["threads"])
    n, d = job["n"], job["dim"]
    with tempfile.TemporaryDirectory(dir=job["tmp"]) as tmp:
        init = np.lib.format.open_memmap(Path(tmp) / "init.npy", mode="w+", dtype=np.float32, shape=(n, d))
        rng = np.random.default_rng(0)
        for s in range(0, n, 1 << 20):
            x = rng.standard_normal((min(1 << 20, n - s), d), dtype=np.float32)
            init[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        nbrs = np.lib.format.open_memmap(Path(tmp) / "nbrs.npy", mode="w+", dtype=np.int64, shape=(n, 10))
        for s in range(0, n, 1 << 20):
            nbrs[s:s + (1 << 20)] = rng.integers(0, n, size=(min(1 << 20, n - s), 10))
        cfg = HomogeniseConfig(steps=job["steps"], batch=1024, neighbours=10, partners=32, device=job["device"],
                               log_every=10**9)
        homogenise(init, HomogeniseConfig(steps=2, batch=1024, device=job["device"]), neighbours=nbrs,
                   out=Path(tmp) / "warm.npy")  # warm-up: libraries and pools into the baseline
        os.remove(Path(tmp) / "warm.npy")
        base = proc_status_kib("VmRSS")
        hs._reset_peak_rss()
        if job["device"].startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        res = homogenise(init, cfg, neighbours=nbrs, out=Path(tmp) / "out.npy")
        out = {"step_ms": 1000 * res.loop_seconds / job["steps"], "peak_step_mib": res.peak_step_bytes / MIB,
               "rss_peak_mib": (proc_status_kib("VmHWM") - base) / 1024, "matrix_mib": n * d * 4 / MIB,
               "total_s": res.seconds}
        if job["device"].startswith("cuda"):
            out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    return out


def _subprocess(kind: str, job: dict) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, f"--{kind}-child", json.dumps(job)], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cpus = os.cpu_count() or 1
    for flag, kind, default in (("--ns", str, "1e3,1e4,1e5,1e6"), ("--vocab", int, 64), ("--batch", int, 128),
                                ("--dim", int, 512), ("--steps", int, 3), ("--threads", int, cpus),
                                ("--max-alloc-gib", float, 6.0), ("--homog-ns", str, "1e4,1e5,1e6,1e7"),
                                ("--homog-dim", int, 64), ("--homog-steps", int, 20), ("--device", str, "cpu"),
                                ("--out", str, str(REPO_ROOT / "bench/results/gif_head_scaling.json"))):
        ap.add_argument(flag, type=kind, default=default)
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the memory-mapped matrices go")
    ap.add_argument("--head-child", help=argparse.SUPPRESS)
    ap.add_argument("--homog-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.head_child:
        print(json.dumps(head_child(json.loads(args.head_child))))
        return
    if args.homog_child:
        print(json.dumps(homog_child(json.loads(args.homog_child))))
        return
    heads = []
    for n in hs.parse_ns(args.ns) if args.ns else []:
        for spec in HEADS:
            length = code_length(n, args.vocab)
            cols = length * args.vocab if spec.kind == "gif" else spec.columns(n, args.batch)
            est = hs.analytic_bytes(spec.rows(n), spec.columns(n, args.batch), args.batch, args.dim) \
                if spec.kind != "gif" else 4 * (3 * cols * args.dim + 3 * args.batch * cols) + 8 * n * length
            row: dict[str, Any] = {"n": n, "head": spec.name, "logit_cols": cols, "analytic_mib": est / MIB,
                                   "code_length": length if spec.kind == "gif" else ""}
            if est > args.max_alloc_gib * (1 << 30):
                row["note"] = f"not run: analytic {est / (1 << 30):.1f} GiB > --max-alloc-gib"
            else:
                row.update(_subprocess("head", {"spec": spec.__dict__, "n": n, "batch": args.batch, "dim": args.dim,
                                                "warmup": 1, "steps": args.steps, "threads": args.threads,
                                                "vocab": args.vocab}))
                row["note"] = row.get("error", "")
            heads.append(row)
            print(f"N={n:.0e} {spec.name}: {row.get('step_ms', float('nan')):.1f} ms, "
                  f"peak {row.get('peak_mib', float('nan')):.1f} MiB {row['note']}", flush=True)
    for n in {r["n"] for r in heads}:  # ratios against the GIF head at the same N
        gif = next((r for r in heads if r["n"] == n and r["head"] == "gif" and "step_ms" in r), None)
        for r in heads:
            if gif and r["n"] == n and "step_ms" in r:
                r["time_vs_gif"] = r["step_ms"] / gif["step_ms"]
                r["peak_vs_gif"] = r["peak_mib"] / max(gif["peak_mib"], 1e-3)
    homog = []
    for n in [int(float(s)) for s in args.homog_ns.split(",") if s.strip()]:
        row = {"n": n, "dim": args.homog_dim, **_subprocess("homog", {"n": n, "dim": args.homog_dim,
               "steps": args.homog_steps, "device": args.device, "threads": args.threads, "tmp": args.tmp})}
        homog.append(row)
        print(f"homogenise N={n:.0e}: {row}", flush=True)
    print(format_table(sorted(heads, key=lambda r: (r["n"], r["head"])), [
        ("n", "N", "{:.0e}".format), ("head", "head", str), ("code_length", "l", str),
        ("logit_cols", "logit cols", str), ("analytic_mib", "analytic MiB", "{:.1f}".format),
        ("peak_mib", "peak RSS MiB", "{:.1f}".format), ("step_ms", "fwd+bwd+SGD ms", "{:.1f}".format),
        ("time_vs_gif", "time / gif", "{:.1f}".format), ("peak_vs_gif", "peak / gif", "{:.1f}".format),
        ("note", "note", str)]))
    print(format_table(homog, [
        ("n", "N", "{:.0e}".format), ("dim", "d", str), ("step_ms", "step ms", "{:.1f}".format),
        ("peak_step_mib", "step tensors MiB", "{:.2f}".format), ("cuda_peak_mib", "CUDA peak MiB", "{:.1f}".format),
        ("rss_peak_mib", "RSS peak MiB (incl. mapped pages)", "{:.0f}".format),
        ("matrix_mib", "matrix on disk MiB", "{:.0f}".format), ("error", "error", str)]))
    write_json(args.out, {"benchmark": "gif_head_scaling", "machine": machine_info(args.device),
                          "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                          "settings": {k: v for k, v in vars(args).items() if not k.endswith("child")},
                          "heads": heads, "homogenise": homog})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
