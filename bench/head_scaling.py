"""Margin-softmax head memory and step time vs the number of identities N: full head vs partial FC.

    python bench/head_scaling.py [--ns 1e4,3e4,1e5,3e5,1e6] [--batch 128] [--max-alloc-gib 6]
                                 [--budget-gib <MemAvailable>] [--gpu-budget-gib 16]

Heads (ArcFace, embedding 512, SGD momentum 0.9 + weight decay, fp32, CPU):

* ``full``: :class:`fr.heads.FullMarginHead`, all N rows in every step;
* ``pfc s=0.1``: :class:`fr.partial_fc.PartialFCHead` alone (world size 1), positives + random
  negatives up to 10 % of the rows per step;
* ``pfc s=0.1 rank 1/8``: one rank of an 8-rank partial FC, simulated on one process: a head of
  ``N / 8`` rows with the 10 % sampling, fed the gathered global batch. Collectives are left out (no
  communication time), and every label is local, so all positives fall on this rank (at most
  ``batch`` of the ``0.1 N / 8`` sampled columns, so the sampled width is the same).

Each (head, N) runs in its own Python subprocess so memory peaks do not mix. Memory is the process
RSS (``/proc/self/status``): ``peak`` is the high-water mark ``VmHWM`` during the timed steps
(reset through ``/proc/self/clear_refs`` after the warm-up step) minus the RSS before the head was
built, i.e. weight + momentum + gradient + every temporary of a forward/backward/SGD step.
``build`` is the peak while constructing the head and its optimizer (the block-seeded init holds the
random blocks and the concatenated weight at once).
Configurations whose analytic estimate exceeds ``--max-alloc-gib`` are not run. ``fits`` compares the
measured peak (or, when not run, the analytic estimate) with ``--budget-gib`` (default: this machine's
``MemAvailable``), and the analytic estimate with a ``--gpu-budget-gib`` accelerator (head only: the
backbone's own memory comes on top).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (GIB, MIB, REPO_ROOT, format_table, machine_info, meminfo_bytes,  # noqa: E402
                          proc_status_kib, write_json)  # noqa: E402

FP32 = 4


@dataclass(frozen=True)
class HeadSpec:
    """A head layout: ``ranks`` shards (one simulated), sampling ``sample_rate`` of a shard's rows."""

    name: str
    kind: str  # "full" | "partial_fc"
    ranks: int = 1
    sample_rate: float = 1.0

    def rows(self, n: int) -> int:
        """Prototype rows held by one rank (the largest shard, as :func:`fr.partial_fc.shard_range`)."""
        return math.ceil(n / self.ranks)

    def columns(self, n: int, batch: int) -> int:
        """Logit columns per step: the sampled rows (never fewer than the positives of the batch)."""
        rows = self.rows(n)
        return rows if self.sample_rate >= 1 else min(rows, max(math.ceil(self.sample_rate * rows), batch))


HEADS = (
    HeadSpec("full", "full"),
    HeadSpec("pfc s=0.1", "partial_fc", 1, 0.1),
    HeadSpec("pfc s=0.1 rank 1/8", "partial_fc", 8, 0.1),
)


def analytic_bytes(rows: int, columns: int, batch: int, dim: int) -> int:
    """Estimated step peak of one head: the tensors that are alive together during the backward.

    ``3 rows d``: weight, its gradient, SGD momentum; ``columns d``: the gathered sampled rows (only when
    sampling); ``2 columns d``: the normalised weight and its gradient; ``3 batch columns``: the logits,
    the softmax and the logit gradient. All fp32; small tensors (embeddings, labels) are ignored.
    """
    gathered = columns * dim if columns < rows else 0
    return FP32 * (3 * rows * dim + gathered + 2 * columns * dim + 3 * batch * columns)


# ------------------------------------------------------------------------------------------------
# child process: one (head, N) configuration


def _reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``5`` into ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def build_head(spec: HeadSpec, rows: int, dim: int):
    """``(head, SGD optimizer)`` for one rank's ``rows`` prototypes (world size 1)."""
    import torch

    from fr.heads import FullMarginHead
    from fr.margins import build_margin
    from fr.partial_fc import PartialFCHead

    margin = build_margin("arcface")
    if spec.kind == "full":
        head = FullMarginHead(rows, 0, dim, margin, sample_virtual=False)
    else:
        head = PartialFCHead(rows, 0, dim, margin, sample_rate=spec.sample_rate)
    return head, torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def head_step(head, opt, embeddings, labels) -> None:
    """One forward (margin softmax loss), backward (to the weight and the embeddings) and SGD step."""
    opt.zero_grad(set_to_none=True)
    embeddings.grad = None
    head(embeddings, labels).loss.backward()
    opt.step()


def run_child(spec: HeadSpec, n: int, batch: int, dim: int, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    """Build the head and its optimizer, warm up, then time ``steps`` forward+backward+SGD steps.

    A step of a tiny head of the same kind runs first, so lazily loaded libraries and thread pools
    are in the baseline RSS rather than in the head's memory.
    """
    import torch

    torch.set_num_threads(threads)
    rows = spec.rows(n)
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn((batch, dim), generator=gen).requires_grad_(True)
    labels = torch.randint(0, rows, (batch,), generator=gen)
    tiny_rows = 4 * batch
    head_step(*build_head(spec, tiny_rows, dim), embeddings, labels % tiny_rows)
    base = proc_status_kib("VmRSS")
    _reset_peak_rss()
    head, opt = build_head(spec, rows, dim)
    build_peak = proc_status_kib("VmHWM") - base
    for _ in range(warmup):
        head_step(head, opt, embeddings, labels)
    _reset_peak_rss()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        head_step(head, opt, embeddings, labels)
        times.append(time.perf_counter() - t0)
    return {
        "baseline_rss_mib": base / 1024,
        "peak_mib": (proc_status_kib("VmHWM") - base) / 1024,
        "after_mib": (proc_status_kib("VmRSS") - base) / 1024,
        "build_peak_mib": build_peak / 1024,
        "step_ms": 1000 * statistics.median(times),
        "step_ms_all": [1000 * t for t in times],
        "columns_used": int(head.sampled_classes.numel()) if spec.kind != "full" else rows,
    }


# ------------------------------------------------------------------------------------------------
# driver


def run_in_subprocess(spec: HeadSpec, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """``run_child`` in a fresh interpreter; an ``error`` entry when it fails (e.g. killed for memory)."""
    job = {"spec": asdict(spec), "n": n, "batch": args.batch, "dim": args.dim, "warmup": args.warmup,
           "steps": args.steps, "threads": args.threads}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"error": f"subprocess exit {proc.returncode}: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares ``(slope, intercept)``; None with fewer than two distinct x or a slope <= 0 (noise)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return (slope, my - slope * mx) if slope > 0 else None


def max_identities(budget_bytes: float, slope: float, intercept: float = 0.0) -> int:
    """Largest N with ``intercept + slope * N <= budget``."""
    return int((budget_bytes - intercept) / slope)


def parse_ns(text: str) -> list[int]:
    try:
        ns = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"--ns must be comma-separated numbers like 1e4,3e4, got {text!r}") from err
    if not ns or min(ns) < 8:
        raise ValueError(f"--ns needs at least one N >= 8 (8 simulated ranks), got {text!r}")
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="1e4,3e4,1e5,3e5,1e6")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-alloc-gib", type=float, default=6.0, help="do not run configurations estimated above this")
    ap.add_argument("--budget-gib", type=float, default=None, help="default: MemAvailable of this machine")
    ap.add_argument("--gpu-budget-gib", type=float, default=16.0)
    ap.add_argument("--out", default=str(REPO_ROOT / "bench/results/head_scaling.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        spec = HeadSpec(**job.pop("spec"))
        print(json.dumps(run_child(spec, **job)))
        return
    ns = parse_ns(args.ns)
    if min(args.batch, args.dim, args.steps, args.threads) < 1 or args.warmup < 1:
        raise ValueError("--batch, --dim, --steps, --threads and --warmup must be >= 1")
    budget = (args.budget_gib * GIB) if args.budget_gib else meminfo_bytes("MemAvailable")
    gpu_budget = args.gpu_budget_gib * GIB
    machine = machine_info("cpu")

    rows = []
    for n in ns:
        for spec in HEADS:
            est = analytic_bytes(spec.rows(n), spec.columns(n, args.batch), args.batch, args.dim)
            row: dict[str, Any] = {"n": n, "head": spec.name, "rows_per_rank": spec.rows(n),
                                   "columns": spec.columns(n, args.batch), "analytic_mib": est / MIB}
            if est > args.max_alloc_gib * GIB:
                row["note"] = f"not run: does not fit --max-alloc-gib {args.max_alloc_gib:g} (analytic {est / GIB:.1f} GiB)"
            else:
                row.update(run_in_subprocess(spec, n, args))
                row["note"] = row.get("error", "")
                if "peak_mib" in row:
                    row["measured_over_analytic"] = row["peak_mib"] * MIB / est
            peak = row.get("peak_mib", est / MIB) * MIB
            row["fits_budget"] = "yes" if peak <= budget else "NO"
            row["fits_gpu"] = "yes" if est <= gpu_budget else "NO"
            rows.append(row)
            print(f"N={n:.0e} {spec.name}: " + ", ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k in ("analytic_mib", "peak_mib", "step_ms", "note")), flush=True)

    limits = []
    for spec in HEADS:
        big = 10**9  # analytic bytes are linear in N up to rounding: slope from a large N
        slope = analytic_bytes(spec.rows(big), spec.columns(big, args.batch), args.batch, args.dim) / big
        measured = [(r["n"], r["peak_mib"] * MIB) for r in rows if r["head"] == spec.name and "peak_mib" in r]
        fit = linear_fit([x for x, _ in measured], [y for _, y in measured])
        limits.append({
            "head": spec.name,
            "max_n_budget_analytic": max_identities(budget, slope),
            "max_n_budget_measured_fit": max_identities(budget, *fit) if fit else None,
            "max_n_gpu_analytic": max_identities(gpu_budget, slope),
            "max_n_gpu_measured_fit": max_identities(gpu_budget, *fit) if fit else None,
            "measured_bytes_per_identity": fit[0] if fit else None,
            "analytic_bytes_per_identity": slope,
        })

    table = format_table(rows, [
        ("n", "N", "{:.0e}".format),
        ("head", "head", str),
        ("rows_per_rank", "rows/rank", str),
        ("columns", "logit cols", str),
        ("analytic_mib", "analytic MiB", "{:.0f}".format),
        ("peak_mib", "peak RSS MiB", "{:.0f}".format),
        ("measured_over_analytic", "peak/analytic", "{:.2f}".format),
        ("build_peak_mib", "build MiB", "{:.0f}".format),
        ("step_ms", "step ms", "{:.0f}".format),
        ("fits_budget", f"fits {budget / GIB:.1f} GiB?", str),
        ("fits_gpu", f"fits {args.gpu_budget_gib:g} GiB GPU?", str),
        ("note", "note", str),
    ])
    limit_table = format_table(limits, [
        ("head", "head", str),
        ("analytic_bytes_per_identity", "analytic B/id", "{:.0f}".format),
        ("measured_bytes_per_identity", "measured B/id", "{:.0f}".format),
        ("max_n_budget_analytic", f"max N in {budget / GIB:.1f} GiB (analytic)", "{:.2e}".format),
        ("max_n_budget_measured_fit", f"max N in {budget / GIB:.1f} GiB (measured fit)", "{:.2e}".format),
        ("max_n_gpu_analytic", f"max N in {args.gpu_budget_gib:g} GiB (analytic)", "{:.2e}".format),
        ("max_n_gpu_measured_fit", f"max N in {args.gpu_budget_gib:g} GiB (measured fit)", "{:.2e}".format),
    ])
    header = (f"ArcFace head, embedding {args.dim}, batch {args.batch}, fp32, SGD momentum; CPU "
              f"{machine['cpu_model']}, {machine['cpu_count']} CPUs, {args.threads} torch threads; "
              f"step = median of {args.steps} after {args.warmup} warm-up")
    print(f"\n{header}\n{table}\n\nwhere each head stops fitting (head memory only)\n{limit_table}")
    write_json(args.out, {
        "benchmark": "head_scaling", "machine": machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: v for k, v in vars(args).items() if k != "child"}, "budget_bytes": budget,
        "gpu_budget_bytes": gpu_budget, "rows": rows, "limits": limits,
        "notes": "peak = VmHWM during the timed steps minus RSS before the head was built; one subprocess per row",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
