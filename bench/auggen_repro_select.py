"""Choose AugGen's EMA width and sampling guidance with M_orig; report the choice with the independent evaluator.

EDM2 chooses the EMA length after training: the power-EMA snapshots that ``train_auggen`` writes let any width be
reconstructed without retraining. For each width in ``--stds`` the finished export is re-exported
(``generation.edm2_checkpoint.export_ema_width``, to ``<export>-ema<std>``; the export itself is never touched),
and for each guidance in ``--guidance`` the ``auggen_generate`` job makes a D_repro set of the first ``--classes``
training classes (one image each, the job's seeds). Each set is scored by ``ray_jobs.auggen_generate.repro_top1``
(is a face nearest to its own class centre among ALL training classes?) twice: by **M_orig** (the target-data FR
model that AugGen's search already uses; it chooses, :func:`choose`) and by the **independent evaluator**
(printed beside, no part in the choice). Then make the full D_repro with the chosen pair (the command is printed).

    python bench/auggen_repro_select.py --config configs/toy_fidelity.yaml --stds 0.05,0.075,0.10,0.15 \\
        --guidance 3,5 --classes 100 --evaluator runs/toy_fidelity/fr/toy_fidelity-evaluator/backbone

Prints a table and writes ``bench/results/auggen_repro_select_<run.name>.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import format_table, machine_info, write_json  # noqa: E402
from generation.edm2_checkpoint import export_ema_width  # noqa: E402
from ray_jobs import layout  # noqa: E402
from ray_jobs.auggen_generate import repro_top1  # noqa: E402
from ray_jobs.config import load_config, with_overrides  # noqa: E402
from ray_jobs.jobs import JOBS  # noqa: E402
from ray_jobs.train_auggen import SNAPSHOT_DIR  # noqa: E402


def choose(points: list[dict]) -> dict:
    """The point with the highest M_orig top-1; on ties the first in the order tried (stds outer, guidance
    inner, both as given), so list the narrower width and the lower guidance first."""
    if not points:
        raise ValueError("no (std, guidance) points to choose from")
    best = max(p["m_orig_top1"] for p in points)
    return next(p for p in points if p["m_orig_top1"] == best)


def variant_dir(export_dir: Path, std: float) -> Path:
    return export_dir.parent / f"{export_dir.name}-ema{std:.3f}"


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--stds", default="0.05,0.10", help="EMA widths to reconstruct, comma separated")
    p.add_argument("--guidance", default="1,3", help="sampling guidances, comma separated")
    p.add_argument("--classes", type=int, default=100, help="the first N training classes, one image each")
    p.add_argument("--m_orig", default="", help="M_orig's backbone prefix (chooses); default: the run's train_fr")
    p.add_argument("--evaluator", required=True, help="the independent evaluator's backbone prefix (reports)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    export_dir = layout.model_dir(cfg, "auggen")
    m_orig = args.m_orig or str(layout.fr_backbone_prefix(cfg))
    if args.classes < 2:
        raise SystemExit("--classes must be >= 2")
    points = []
    for std in floats(args.stds):
        model = variant_dir(export_dir, std)
        if not (model / "config.json").is_file():
            export_ema_width(export_dir, export_dir / SNAPSHOT_DIR, model, std)
        for g in floats(args.guidance):
            name = f"auggen_select_ema{std:.3f}_g{g:g}_c{args.classes}"
            sub = with_overrides(cfg, ["auggen.generate.which=repro", f"auggen.generate.model={model}",
                                       f"auggen.generate.dataset_name={name}", f"auggen.generate.guidance={g}",
                                       f"auggen.generate.num_classes={args.classes}",
                                       "auggen.generate.images_per_class=1", "auggen.generate.evaluate=false"])
            t0 = time.perf_counter()
            out_dir = JOBS["auggen_generate"](sub)["out_dir"]
            point = {"std": std, "guidance": g, "model": str(model), "dataset": str(out_dir),
                     "generate_s": time.perf_counter() - t0}
            for key, fr in (("m_orig", m_orig), ("evaluator", args.evaluator)):
                point[f"{key}_top1"] = repro_top1(with_overrides(sub, [f"auggen.generate.evaluator={fr}"]),
                                                  out_dir)["top1"]
            points.append(point)
    chosen = choose(points)
    for q in points:
        q["label"] = f"{q['std']:.3f} / {q['guidance']:g}" + (" (chosen)" if q is chosen else "")
    f3 = "{:.3f}".format
    print(f"D_repro own-class top-1 (first {args.classes} classes x 1 image, among all classes); chosen by M_orig, "
          "the evaluator column plays no part in it")
    print(format_table(points, [("label", "EMA std / guidance", str), ("m_orig_top1", "M_orig top-1", f3),
                                ("evaluator_top1", "evaluator top-1", f3), ("generate_s", "generate s", "{:.0f}".format)]))
    out = write_json(Path("bench/results") / f"auggen_repro_select_{cfg.run.name}.json",
                     {"args": vars(args), "m_orig": m_orig, "points": points, "chosen": chosen,
                      "rule": choose.__doc__, "machine": machine_info("cpu")})
    print(f"chosen EMA std {chosen['std']:g}, guidance {chosen['guidance']:g} -> {out}\nfull D_repro: python -m "
          f"ray_jobs auggen_generate --config {args.config} auggen.generate.which=repro "
          f"auggen.generate.model={chosen['model']} auggen.generate.guidance={chosen['guidance']:g} ...")


if __name__ == "__main__":
    main()
