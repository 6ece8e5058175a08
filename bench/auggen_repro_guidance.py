"""Choose AugGen's sampling guidance with M_orig, report it with the independent evaluator.

Takes D_repro sets made by ``auggen_generate which=repro`` at several guidances (``--sets g=dir,...``) and
scores each with ``ray_jobs.auggen_generate.repro_top1`` (is a face nearest to its own class centre of the
real images?) twice: by **M_orig** (the target-data FR model AugGen's search already uses; the choice: highest
top-1, ties to the lower guidance) and by the **independent evaluator** (printed beside, no part in the choice).

    python bench/auggen_repro_guidance.py --config configs/toy_fidelity.yaml \\
        --sets 1=runs/toy_fidelity/data/auggen_repro/train,3=runs/toy_fidelity/data/auggen_repro_g3/train \\
        --m_orig runs/toy_fidelity/fr/toy_fidelity/backbone --evaluator runs/toy_fidelity/fr/toy_fidelity-evaluator/backbone

Prints a table and writes ``bench/results/auggen_repro_guidance_<run.name>.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import format_table, machine_info, write_json  # noqa: E402
from ray_jobs.auggen_generate import repro_top1  # noqa: E402
from ray_jobs.config import load_config  # noqa: E402


def choose(points: list[dict]) -> float:
    """The guidance with the highest M_orig top-1 (the lower guidance on ties)."""
    best = max(p["m_orig_top1"] for p in points)
    return min(p["guidance"] for p in points if p["m_orig_top1"] == best)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--sets", required=True, help="g=D_repro shard dir, comma separated")
    p.add_argument("--m_orig", required=True, help="M_orig's backbone prefix (chooses)")
    p.add_argument("--evaluator", required=True, help="the independent evaluator's backbone prefix (reports)")
    args = p.parse_args()
    points = []
    for item in args.sets.split(","):
        g, directory = item.split("=", 1)
        point = {"guidance": float(g), "dataset": directory}
        for key, model in (("m_orig", args.m_orig), ("evaluator", args.evaluator)):
            cfg = load_config(args.config, [f"auggen.generate.evaluator={model}"])
            point[f"{key}_top1"] = repro_top1(cfg, Path(directory))["top1"]
        points.append(point)
    chosen = choose(points)
    for q in points:
        q["label"] = f"{q['guidance']:g}" + (" (chosen)" if q["guidance"] == chosen else "")
    f3 = "{:.3f}".format
    print("D_repro own-class top-1; chosen by M_orig, the evaluator column plays no part in it")
    print(format_table(points, [("label", "guidance", str), ("m_orig_top1", "M_orig top-1", f3),
                                ("evaluator_top1", "evaluator top-1", f3)]))
    name = load_config(args.config, []).run.name
    out = write_json(Path("bench/results") / f"auggen_repro_guidance_{name}.json",
                     {"args": vars(args), "points": points, "chosen_guidance": chosen, "rule": choose.__doc__,
                      "machine": machine_info("cpu")})
    print(f"chosen guidance {chosen:g} -> {out}")


if __name__ == "__main__":
    main()
