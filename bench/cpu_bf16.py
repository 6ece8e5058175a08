"""fp32 vs bf16 autocast on the CPU, side by side: the training steps of a preset's three trainers.

    python bench/cpu_bf16.py [--config configs/tiny.yaml] [--threads 2] [--reps 5] [--steps 3]
                             [--out bench/results/cpu_bf16.json]

Run it from the repository root. For the preset's FR model (``train_fr``: backbone, batch, partial-FC
ArcFace head over the toy set's 300 classes, ``fr.train_step.FRTrainStep``), its DiT (``train_dit``: size,
``model_kwargs``, batch; ``generation.trainer_step.dit_train_step`` without the ID loss) and its EDM2 UNet
(``auggen.train.size``; ``bench.auggen_throughput.bench_size``), one fixed random batch each, the fp32 step
and the bf16-autocast step (``cpu_bf16``: weights, optimiser and loss stay fp32) are timed in alternation,
``--reps`` rounds of ``--steps`` steps after one untimed step, so load on the machine falls on both.
The table gives each precision's median step time and images/s and the ratio fp32 time / bf16 time.
Without bf16 units (no ``avx512_bf16``/``amx_bf16`` in /proc/cpuinfo) the trainers keep fp32
(``fr.training.autocast_dtype``); this bench then still times the emulated bf16, to show why.
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
from fr.fr_model import build_fr_net  # noqa: E402
from fr.head_registry import HeadSpec, build_head  # noqa: E402
from fr.margins import build_margin  # noqa: E402
from fr.train_step import FRTrainStep  # noqa: E402
from fr.training import NonFiniteGuard, cpu_has_bf16  # noqa: E402
from generation.dit import build_dit  # noqa: E402
from generation.ema import EMA  # noqa: E402
from generation.trainer_step import dit_train_step, step_generator  # noqa: E402
from ray_jobs.config import load_config  # noqa: E402

TOY_CLASSES = 300
LANDMARKS_112 = [[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]


def fr_steps(cfg: Any) -> tuple[Callable[[], None], Callable[[], None], int]:
    """``train_fr``'s step for the preset's backbone in fp32 and in bf16 (two models, same seed)."""
    t = cfg.train_fr
    gen = torch.Generator().manual_seed(0)
    images = torch.randn((t.batch_size, 3, 112, 112), generator=gen)
    labels = torch.randint(0, TOY_CLASSES, (t.batch_size,), generator=gen)

    def build(cpu_bf16: bool) -> Callable[[], None]:
        torch.manual_seed(0)
        net = build_fr_net(t.backbone, t.embedding_size, False, t.backbone_kwargs)
        head = build_head("partial_fc", HeadSpec(num_classes=TOY_CLASSES, embedding_size=t.embedding_size,
                                                 margin=build_margin("arcface"), seed=0))
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (net, head)]
        step = FRTrainStep(net, head, *opts, device=torch.device("cpu"), cpu_bf16=cpu_bf16)
        if cpu_bf16 and not step.amp:  # no bf16 units: time the emulated bf16 anyway (see the docstring)
            step.amp, step.amp_dtype = True, torch.bfloat16
        return lambda: step(images, labels, 0.01, 0)

    return build(False), build(True), t.batch_size


def dit_steps(cfg: Any) -> tuple[Callable[[], None], Callable[[], None], int]:
    """``train_dit``'s step (no ID loss) for the preset's DiT in fp32 and in bf16."""
    t = cfg.train_dit
    b = t.batch_size

    def build(amp: torch.dtype | None) -> Callable[[], None]:
        torch.manual_seed(0)
        model = build_dit(t.size, **t.model_kwargs)
        with torch.no_grad():  # past adaLN-Zero's zero init, so every layer does real work
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        s = model.config.image_size
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(b, 3, s, s, generator=gen) * 2 - 1
        protos = torch.nn.functional.normalize(torch.randn(b, model.config.cond_dim, generator=gen))
        landmarks = (torch.tensor(LANDMARKS_112) * s / 112).expand(b, 5, 2)
        ema, opt, guard = EMA(model, 0.999), torch.optim.AdamW(model.parameters(), lr=1e-4), NonFiniteGuard(5)
        return lambda: dit_train_step(model, ema, opt, images, protos, landmarks, step_generator(0, 0, 0), guard, 0,
                                      autocast_dtype=amp)

    return build(None), build(torch.bfloat16), b


def alternate(fp32: Callable[[], None], bf16: Callable[[], None], reps: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each, timed in alternating rounds (one untimed step before each round)."""
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(reps):
        for name, fn in (("fp32", fp32), ("bf16", bf16)):
            fn()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()} | {f"{k}_rounds": v for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO_ROOT / "configs/tiny.yaml"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (the jobs use all)")
    ap.add_argument("--reps", type=int, default=5, help="alternating rounds per precision")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--parts", default="fr,dit,edm2", help="comma-separated: fr, dit, edm2")
    ap.add_argument("--out", default=str(REPO_ROOT / "bench/results/cpu_bf16.json"))
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("fr", "dit", "edm2")]
    if bad or not parts:
        raise ValueError(f"--parts: unknown {bad}; choose from fr, dit, edm2")
    if args.reps < 1 or args.steps < 1:
        raise ValueError("--reps and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    rows = []
    for part in parts:
        t0 = time.perf_counter()
        if part == "edm2":
            from bench.auggen_throughput import bench_size

            size = cfg.auggen.train.size
            # bench_size times its own steps; alternate whole measurements so load falls on both
            runs = {"fp32": [], "bf16": []}
            for _ in range(args.reps):
                for name in runs:
                    row = bench_size(size, torch.device("cpu"), name == "bf16", args.steps)
                    runs[name].append(row["batch"] / row["train_images_per_s"])
            batch, model = row["batch"], f"EDM2 {size}"
            med = {k: statistics.median(v) for k, v in runs.items()} | {f"{k}_rounds": v for k, v in runs.items()}
        else:
            fp32, bf16, batch = (fr_steps if part == "fr" else dit_steps)(cfg)
            med = alternate(fp32, bf16, args.reps, args.steps)
            model = f"{cfg.train_fr.backbone} (train_fr)" if part == "fr" else f"DiT {cfg.train_dit.size} (train_dit)"
        rows.append({"part": part, "model": model, "batch": batch, "fp32_s": med["fp32"], "bf16_s": med["bf16"],
                     "fp32_images_per_s": batch / med["fp32"], "bf16_images_per_s": batch / med["bf16"],
                     "ratio": med["fp32"] / med["bf16"], "fp32_rounds_s": med["fp32_rounds"],
                     "bf16_rounds_s": med["bf16_rounds"], "wall_s": time.perf_counter() - t0,
                     "loadavg_1m": os.getloadavg()[0]})
        print(f"{model}: fp32 {med['fp32'] * 1e3:.0f} ms, bf16 {med['bf16'] * 1e3:.0f} ms per step "
              f"({rows[-1]['ratio']:.2f}x)", flush=True)
    machine = machine_info("cpu")
    table = format_table(rows, [
        ("model", "model", str),
        ("batch", "batch", str),
        ("fp32_s", "fp32 ms/step", lambda v: f"{v * 1e3:.0f}"),
        ("bf16_s", "bf16 ms/step", lambda v: f"{v * 1e3:.0f}"),
        ("fp32_images_per_s", "fp32 img/s", "{:.1f}".format),
        ("bf16_images_per_s", "bf16 img/s", "{:.1f}".format),
        ("ratio", "fp32/bf16", "{:.2f}x".format),
    ])
    print(f"\n{Path(args.config).name} on {machine['cpu_model']} ({machine['cpu_count']} CPUs, {args.threads} torch "
          f"threads, bf16 units: {cpu_has_bf16()}, load {os.getloadavg()[0]:.2f}; {args.reps} rounds x {args.steps} "
          f"steps)\n{table}")
    write_json(args.out, {"benchmark": "cpu_bf16", "config": args.config, "machine": machine,
                          "cpu_has_bf16": cpu_has_bf16(), "threads": args.threads, "reps": args.reps,
                          "steps": args.steps, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
