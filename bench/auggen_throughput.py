"""AugGen's EDM2 model: training throughput (img/s, GFLOP/s, % of this run's matmul rate) and Heun
sampler img/s, for the tiny (32 px) and the 112 px XS size.

FLOPs per training image = 3 x the forward FLOPs counted by ``torch.utils.flop_counter`` (forward +
backward ~ 3 forwards). Prints a table and writes ``bench/results/auggen_throughput.json``.
On the CPU, ``--cpu_bf16`` times every size in fp32 and under bf16 autocast (``auggen.train.cpu_bf16``) in the
same run, with the ratio. ``bench/results/auggen_throughput.json`` is written by every run (the last one wins).
    python bench/auggen_throughput.py [--device cuda] [--sizes tiny xs] [--cpu_bf16 --reps 8]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import REPO_ROOT, format_table, machine_info, write_json  # noqa: E402
from bench.dit_throughput import _timed, matmul_gflops  # noqa: E402
from fr.training import NonFiniteGuard  # noqa: E402
from generation.edm2_loss import EDM2LossConfig, edm2_train_step, make_optimizer, one_hot  # noqa: E402
from generation.edm2_sampler import sample_edm2  # noqa: E402
from generation.edm2_unet import EDM2Denoiser, edm2_config  # noqa: E402

NUM_CLASSES = 300
# (train batch, timed train steps, sample batch, sampler steps) per device and size
DEFAULTS = {"cpu": {"tiny": (32, 3, 16, 32), "xs": (1, 1, 1, 2)},
            "cuda": {"tiny": (256, 10, 256, 32), "xs": (64, 10, 64, 32)}}


def forward_flops(model: EDM2Denoiser, batch: int, device: torch.device) -> float:
    s = model.config.image_size
    x = torch.randn(batch, 3, s, s, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.ones(batch, device=device), one_hot(torch.arange(batch) % NUM_CLASSES, NUM_CLASSES).to(device),
              return_logvar=True)
    return counter.get_total_flops() / batch


def bench_size(size: str, device: torch.device, bf16: bool, reps: int = 0) -> dict:
    batch, default_reps, sbatch, ssteps = DEFAULTS[device.type][size]
    reps = reps or default_reps
    cfg = edm2_config(size, NUM_CLASSES)
    model = EDM2Denoiser(cfg).to(device)
    opt = make_optimizer(model, 1e-3)
    s = cfg.image_size
    images = torch.rand(batch, 3, s, s, device=device) * 2 - 1
    labels = one_hot(torch.arange(batch) % NUM_CLASSES, NUM_CLASSES).to(device)
    guard, g = NonFiniteGuard(5), torch.Generator().manual_seed(0)
    amp = torch.bfloat16 if bf16 else None
    step = lambda: edm2_train_step(model, opt, images, labels, EDM2LossConfig(), g, guard, 0, 1e-3, amp)  # noqa: E731
    train_t = statistics.median(_timed(step, device, 1, reps))
    flops = 3 * forward_flops(model, 1, device)
    cvec = one_hot(torch.arange(sbatch) % NUM_CLASSES, NUM_CLASSES).to(device)
    sample = lambda: sample_edm2(model, cvec, list(range(sbatch)), steps=ssteps, amp_dtype=amp)  # noqa: E731
    sample_t = statistics.median(_timed(sample, device, 0, 1))
    forwards = 2 * ssteps - 1
    return {"size": size, "precision": "bf16 autocast" if amp else "fp32",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch": batch,
            "train_images_per_s": batch / train_t, "train_gflops_per_image": flops / 1e9,
            "train_gflop_per_s": batch * flops / train_t / 1e9, "sample_steps": ssteps,
            "sample_images_per_s": sbatch / sample_t,
            "sample_images_per_s_at_32_steps": sbatch / sample_t * forwards / (2 * 32 - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "xs"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cpu_bf16", action="store_true",
                    help="on the CPU, time each size in fp32 AND under bf16 autocast (auggen.train.cpu_bf16), "
                         "side by side in this run")
    ap.add_argument("--reps", type=int, default=0, help="timed train steps per row (0: the size's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_gflops(device, torch.float32, 8192 if device.type == "cuda" else 2048)
    # GPU: bf16 autocast as train_auggen uses it; CPU: fp32, and with --cpu_bf16 both, alternating per size
    modes = [True] if device.type == "cuda" else [False, True] if args.cpu_bf16 else [False]
    rows = [bench_size(size, device, bf16, args.reps) for size in args.sizes for bf16 in modes]
    for r in rows:
        base = next(q for q in rows if q["size"] == r["size"])
        r["speedup_vs_first"] = r["train_images_per_s"] / base["train_images_per_s"]
    for r in rows:
        r["pct_of_matmul"] = 100 * r["train_gflop_per_s"] / peak
    cols = [("size", "size", str), ("precision", "precision", str), ("params_m", "params M", "{:.1f}".format),
            ("batch", "batch", str),
            ("train_images_per_s", "train img/s", "{:.2f}".format),
            ("train_gflops_per_image", "GFLOP/img", "{:.2f}".format),
            ("train_gflop_per_s", "GFLOP/s", "{:.1f}".format), ("pct_of_matmul", "% matmul", "{:.0f}".format),
            ("speedup_vs_first", "train x", "{:.2f}".format),
            ("sample_images_per_s_at_32_steps", "sample img/s (32 Heun steps)", "{:.3f}".format)]
    print(f"fp32 matmul rate in this run: {peak:.1f} GFLOP/s")
    print(format_table(rows, cols))
    out = write_json(REPO_ROOT / "bench" / "results" / "auggen_throughput.json",
                     {"machine": machine_info(args.device), "matmul_gflop_per_s": peak, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
