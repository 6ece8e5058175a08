"""Learning curve of the toy DiT: fidelity by the INDEPENDENT evaluator vs training steps and CPU minutes.

Trains a DiT recipe with the plain-torch pieces of ``bench/dit_toy_quality.py`` (the Ray job's
``dit_train_step``) and, at every ``--eval_at`` step, samples fixed probe rows (``generation.dit_probe``:
the same real and virtual prototype rows, landmark sets and noise seeds every time) and measures them
with the evaluator (``evaluation.independent_evaluator.FidelityProbe``): real-prototype top-1 and
own-class cosine against the evaluator's class means of the real training images, and the virtual
identities' consistency / separability as ratios of the real set's. Training time excludes the
evaluations; CPU minutes are this process's CPU time (all threads).

    nice -n 19 python bench/dit_learning_curve.py --name tiny --image_size 32 --patch 4 --hidden 192 --depth 4 \\
        --heads 4 --id_weight 0 --ema 0.999 --ema_warmup --seconds 900 --eval_at 250,500,1000,2000,3000

Writes ``docs/dit_learning_curve_<name>.png``, ``bench/results/dit_learning_curve_<name>.json`` and the last
probe grid ``bench/results/dit_learning_curve/<name>_<weights>_g<g>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_toy_quality import add_common_args, make_probe, setup, train  # noqa: E402
from evaluation.independent_evaluator import format_independent  # noqa: E402
from evaluation.plots import image_grid  # noqa: E402
from generation.dit_probe import probe_rows, sample_rows  # noqa: E402

RESULTS = Path("bench/results")
DOCS = Path("docs")


def plot_curve(points: list[dict], title: str, path: Path) -> Path:
    """Four panels: real top-1, real own cosine, virtual consistency / separability ratios vs steps; top-1 vs CPU min."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    keys = sorted({(p["weights"], p["guidance"]) for p in points})
    for weights, g in keys:
        pts = sorted((p for p in points if (p["weights"], p["guidance"]) == (weights, g)), key=lambda p: p["step"])
        lab = f"{weights} g={g:g}"
        steps = [p["step"] for p in pts]
        axes[0].plot(steps, [p["real_top1"] for p in pts], "o-", label=lab)
        axes[1].plot(steps, [p["real_own_cos"] for p in pts], "o-", label=lab)
        axes[2].plot(steps, [p.get("virtual_consistency_ratio", np.nan) for p in pts], "o-", label=lab + " C")
        axes[2].plot(steps, [p.get("virtual_separability_ratio", np.nan) for p in pts], "x--", label=lab + " S")
        axes[3].plot([p["cpu_min"] for p in pts], [p["real_top1"] for p in pts], "o-", label=lab)
    if points:
        axes[0].axhline(points[0]["chance_top1"], color="grey", lw=0.8, ls=":", label="chance")
    for ax, (xl, yl) in zip(axes, [("steps", "real-prototype top-1"), ("steps", "cosine to own class mean"),
                                   ("steps", "virtual C, S / real"), ("CPU minutes (training)", "real top-1")]):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[2].axhline(0.8, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    fig.suptitle(textwrap.fill(title, 190), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="curve")
    add_common_args(p)
    p.add_argument("--eval_at", default="250,500,1000,2000", help="steps at which to measure (comma list)")
    p.add_argument("--raw", action="store_true", help="also measure the raw (non-EMA) weights")
    args = p.parse_args()
    eval_at = sorted(int(s) for s in args.eval_at.split(","))
    args.max_steps = min(args.max_steps, eval_at[-1])
    data, cond, protos, backbone = setup(args)
    probe = make_probe(args, protos)
    rows = probe_rows(protos.num_real, protos.num_virtual, args.eval_ids, args.eval_images)
    points: list[dict] = []
    grid_dir = RESULTS / "dit_learning_curve"
    grid_dir.mkdir(parents=True, exist_ok=True)

    def measure(step: int, wall: float, cpu: float, raw, ema) -> None:
        for weights, model in [("ema", ema)] + ([("raw", raw)] if args.raw else []):
            for g in args.guidance:
                t0 = time.perf_counter()
                faces = sample_rows(model, cond, rows, data[2], args.sample_steps, g)
                summary = probe.measure(faces, rows)
                r, v = summary["real"], summary["virtual"]
                points.append({"step": step, "train_wall_s": wall, "cpu_min": cpu / 60, "weights": weights,
                               "guidance": g, "real_top1": r.get("top1"), "real_own_cos": r.get("own_cos"),
                               "real_other_max_cos": r.get("other_max_cos"), "chance_top1": r.get("chance_top1"),
                               **{f"virtual_{k}": val for k, val in v.items() if k != "count"},
                               "load": open("/proc/loadavg").read().split()[:3]})
                print(format_independent(summary, f"[{args.name}] step {step} ({wall:.0f} s, {cpu / 60:.1f} CPU min) "
                                         f"{weights} g={g:g} ({time.perf_counter() - t0:.0f} s to measure)"), flush=True)
                png = grid_dir / f"{args.name}_{weights}_g{g:g}.png"  # overwritten: the last checkpoint's
                pick = np.r_[0:min(24, len(rows)):3, len(rows) // 2:len(rows) // 2 + 24:3]
                pick = pick[pick < len(rows)]
                image_grid(list(faces[pick]), 8, png, labels=[("r" if q < protos.num_real else "v") + str(q)
                                                               for q in rows[pick]])

    t0 = time.perf_counter()
    train(args, data, cond, backbone, eval_at, measure)
    recipe = {k: getattr(args, k) for k in ("image_size", "patch_size", "hidden_size", "depth", "num_heads", "lr",
                                            "warmup", "batch", "ema", "ema_warmup", "id_weight", "sample_steps",
                                            "seed")}
    machine = f"{os.cpu_count()}-CPU machine, this process at nice {os.nice(0)}, load {os.getloadavg()[0]:.1f}"
    title = f"{args.name}: {recipe}; fidelity by the independent evaluator {args.evaluator}; {machine}"
    png = plot_curve(points, title, DOCS / f"dit_learning_curve_{args.name}.png")
    out = RESULTS / f"dit_learning_curve_{args.name}.json"
    out.write_text(json.dumps({"recipe": recipe, "evaluator": args.evaluator, "points": points,
                               "total_wall_s": time.perf_counter() - t0,
                               "machine": machine}, indent=1))
    print(f"-> {png}, {out}")


if __name__ == "__main__":
    main()
