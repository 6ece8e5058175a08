"""VIGFace DiT throughput: training step and 50-step CFG sampling, against the machine's matmul rate.

    python bench/dit_throughput.py [--device cpu|cuda] [--sizes tiny,B] [--out bench/results/dit_throughput.json]

Run it from the repository root. For each DiT size at 112x112 (tiny = patch 8, B = DiT-B/4):
- training: ``generation.trainer_step.dit_train_step`` (v-prediction MSE, condition dropout, AdamW,
  EMA update; no identity loss, so only the DiT is timed) on one fixed random batch; bf16 autocast
  on CUDA as ``train_dit`` does. images/s = batch / median step time.
- sampling: DDIM with classifier-free guidance (``generation.sampler.sample``: cond + uncond in one
  batched forward per step) in fp32 as ``generate`` runs it. When fewer than 50 steps are timed (the
  CPU default for B/4), the time of the timed steps is scaled to 50 steps (every step costs the same
  forward), and the table says so.
FLOPs per image are analytic (``generation.dit.flops_per_forward``): training ~3x a forward (the
backward costs about twice the forward), sampling 50 x 2 forwards. The achieved FLOP rate is
compared with a large square matmul timed in the same run (fp32; bf16 too on CUDA).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import REPO_ROOT, format_table, machine_info, write_json  # noqa: E402
from fr.training import NonFiniteGuard  # noqa: E402
from generation.dit import DIT_SIZES, build_dit, flops_per_forward  # noqa: E402
from generation.ema import EMA  # noqa: E402
from generation.sampler import sample  # noqa: E402
from generation.trainer_step import dit_train_step, step_generator  # noqa: E402

SAMPLING_STEPS = 50
GUIDANCE = 4.0
# (train batch, timed train steps, sample batch, timed sampling steps) per device and size
DEFAULTS = {
    "cpu": {"tiny": (16, 3, 8, SAMPLING_STEPS), "B": (2, 1, 1, 1)},
    "cuda": {"tiny": (256, 10, 256, SAMPLING_STEPS), "B": (64, 10, 64, SAMPLING_STEPS)},
}


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls after ``warmup`` untimed calls (GPU synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs), median of ``reps``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / statistics.median(_timed(lambda: a @ b, device, 1, reps)) / 1e9


def _model(size: str, device: torch.device):
    torch.manual_seed(0)
    model = build_dit(size, image_size=112)
    with torch.no_grad():  # past adaLN-Zero's zero init, so the step does real work on every layer
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(device)


def train_throughput(size: str, batch: int, steps: int, device: torch.device) -> dict[str, Any]:
    model = _model(size, device).train()
    ema = EMA(model, 0.9999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1).to(device)
    protos = torch.nn.functional.normalize(torch.randn(batch, model.config.cond_dim, generator=gen)).to(device)
    landmarks = torch.tensor([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]).expand(batch, 5, 2)
    guard = NonFiniteGuard(5)
    amp = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        dit_train_step(model, ema, opt, images, protos, landmarks, step_generator(0, 0, 0), guard, 0,
                       autocast_dtype=amp)

    times = _timed(step, device, 1, steps)
    flops = 3 * flops_per_forward(model.config)
    return {"batch": batch, "timed": f"{steps} step(s)", "seconds": statistics.median(times),
            "images_per_s": batch / statistics.median(times), "flops_per_image": flops,
            "precision": "bf16 autocast" if amp else "fp32", "note": ""}


def sample_throughput(size: str, batch: int, steps: int, device: torch.device) -> dict[str, Any]:
    model = _model(size, device).eval()
    protos = torch.nn.functional.normalize(torch.randn(batch, model.config.cond_dim)).to(device)
    maps = torch.zeros(batch, model.config.landmark_channels, 112, 112, device=device)

    def run() -> None:
        sample(model, protos, maps, steps=steps, guidance=GUIDANCE, generator=torch.Generator().manual_seed(0))

    seconds = statistics.median(_timed(run, device, 1, 1 if steps == SAMPLING_STEPS else 2))
    full = seconds * SAMPLING_STEPS / steps
    return {"batch": batch, "timed": f"{steps} of {SAMPLING_STEPS} steps", "seconds": full,
            "images_per_s": batch / full, "flops_per_image": SAMPLING_STEPS * 2 * flops_per_forward(model.config),
            "precision": "fp32",
            "note": "" if steps == SAMPLING_STEPS else f"time of {steps} step(s) x {SAMPLING_STEPS // steps}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--sizes", default="tiny,B", help="comma-separated DiT sizes (tiny, S, B, L, XL)")
    ap.add_argument("--matmul-n", type=int, default=0, help="matmul side (default 2048 on CPU, 8192 on CUDA)")
    ap.add_argument("--out", default=str(REPO_ROOT / "bench/results/dit_throughput.json"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    defaults = DEFAULTS[args.device]
    unknown = [s for s in sizes if s not in DIT_SIZES]
    if unknown or not sizes:
        raise ValueError(f"--sizes: unknown {unknown}; choose from {', '.join(DIT_SIZES)}")
    machine = machine_info(args.device)
    n = args.matmul_n or (8192 if args.device == "cuda" else 2048)
    peaks = {"fp32": matmul_gflops(device, torch.float32, n)}
    if args.device == "cuda":
        peaks["bf16 autocast"] = matmul_gflops(device, torch.bfloat16, n)
    print(f"matmul {n}x{n}: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)

    rows = []
    for size in sizes:
        train_batch, train_steps, sample_batch, sample_steps = defaults.get(size, defaults["B"])
        for what, fn, batch, steps in (("train step", train_throughput, train_batch, train_steps),
                                       ("sample 50 steps CFG", sample_throughput, sample_batch, sample_steps)):
            t0 = time.perf_counter()
            row = fn(size, batch, steps, device)
            gflops = row["images_per_s"] * row["flops_per_image"] / 1e9
            row.update(size=f"{size}/{build_dit(size).config.patch_size}", what=what, achieved_gflops=gflops,
                       fraction_of_matmul=gflops / peaks[row["precision"]], wall_s=time.perf_counter() - t0,
                       loadavg_1m=os.getloadavg()[0])
            rows.append(row)
            print(f"{row['size']} {what}: {row['images_per_s']:.3g} img/s ({row['wall_s']:.0f} s)", flush=True)

    table = format_table(rows, [
        ("size", "DiT", str),
        ("what", "measurement", str),
        ("batch", "batch", str),
        ("timed", "timed", str),
        ("images_per_s", "img/s", "{:.3g}".format),
        ("flops_per_image", "GFLOP/img", lambda v: f"{v / 1e9:.4g}"),
        ("achieved_gflops", "GFLOP/s", "{:.3g}".format),
        ("fraction_of_matmul", "of matmul", "{:.1%}".format),
        ("precision", "precision", str),
        ("note", "note", lambda v: v or "-"),
    ])
    header = (f"DiT at 112x112 on {args.device} ({machine.get('gpu') or machine['cpu_model']}, "
              f"{machine['cpu_count']} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}); "
              f"matmul {n}x{n}: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"\n{header}\n{table}")
    write_json(args.out, {
        "benchmark": "dit_throughput", "device": args.device, "machine": machine, "matmul_n": n,
        "matmul_gflops": peaks, "rows": rows, "sampling_steps": SAMPLING_STEPS, "guidance": GUIDANCE,
        "notes": "train FLOPs = 3 x forward; sampling FLOPs = 50 steps x 2 forwards (cond + uncond); "
                 "fixed random batch, no data loading, no identity loss",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
