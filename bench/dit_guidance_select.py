"""Choose the guidance for a DiT's VIRTUAL identities with the stage-1 model, report it with the independent evaluator.

The rule is fixed before looking at any score: for each guidance in ``--guidance``, sample ``--images`` images of
each of ``--ids`` virtual prototype rows (fixed landmark sets and noise seeds, ``generation.dit_probe``), embed them
with the STAGE-1 model the DiT is conditioned on, and compute the class consistency and separability (VIGFace
eq. 8-9) as ratios of the real training set's by the same model; the chosen guidance maximises
``min(consistency ratio, separability ratio)`` (:func:`choose_guidance`; ties go to the lower guidance). The
independent evaluator's figures for the same images are printed beside them and play no part in the choice, so
they stay an honest measurement of the chosen setting.

    python bench/dit_guidance_select.py --dit runs/toy_fidelity/dit/toy_fidelity --data runs/toy_fidelity/data/toy/train \\
        --fr runs/toy_fidelity/fr/toy_fidelity --evaluator runs/toy_fidelity/fr/toy_fidelity-evaluator/backbone \\
        --guidance 3,4,5 --ids 60 --images 4 --name toy_fidelity

Prints a table, writes ``bench/results/dit_guidance_select_<name>.json`` and one grid per guidance under
``bench/results/dit_guidance_select/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.common import format_table, machine_info, write_json  # noqa: E402
from dit_toy_quality import load_data  # noqa: E402
from evaluation.embed import load_evaluator  # noqa: E402
from evaluation.independent_evaluator import FidelityProbe  # noqa: E402
from evaluation.plots import image_grid  # noqa: E402
from fr.prototypes import load_prototypes  # noqa: E402
from generation.conditions import condition_prototypes, unit_to_images  # noqa: E402
from generation.dit import load_dit  # noqa: E402
from generation.dit_probe import sample_rows  # noqa: E402

RESULTS = Path("bench/results")


def choose_guidance(points: list[dict], key: str = "stage1") -> float:
    """The guidance whose ``key`` model's min(consistency ratio, separability ratio) is largest (lowest on ties)."""
    if not points:
        raise ValueError("no guidance points to choose from")
    score = [min(p[f"{key}_consistency_ratio"], p[f"{key}_separability_ratio"]) for p in points]
    best = max(score)
    return min(p["guidance"] for p, s in zip(points, score) if s == best)


def virtual_rows(num_real: int, num_virtual: int, ids: int, images: int) -> np.ndarray:
    """The first ``ids`` virtual prototype rows (all when ids <= 0), each repeated ``images`` times."""
    n = num_virtual if ids <= 0 else min(ids, num_virtual)
    if n < 2:
        raise ValueError(f"need >= 2 virtual prototypes to measure separability, the model has {num_virtual}")
    return np.repeat(num_real + np.arange(n), images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dit", required=True, help="the train_dit export")
    p.add_argument("--data", required=True, help="the real training shards (the C/S yardstick, landmark sets)")
    p.add_argument("--fr", required=True, help="the stage-1 export (backbone + prototypes) the DiT is conditioned on")
    p.add_argument("--evaluator", required=True, help="the independent evaluator's backbone prefix (reported only)")
    p.add_argument("--guidance", type=lambda s: [float(x) for x in s.split(",")], default=[3.0, 4.0, 5.0])
    p.add_argument("--ids", type=int, default=60, help="virtual identities (<= 0: all)")
    p.add_argument("--images", type=int, default=4, help="images per identity")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="dit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_dit(args.dit).eval()
    protos = load_prototypes(Path(args.fr) / "prototypes")
    cond = condition_prototypes(protos.weight)
    real = load_data(112, Path(args.data))
    real_faces, real_labels = unit_to_images(real[0]), real[1].numpy()
    landmarks = real[2] if model.config.image_size == 112 else load_data(model.config.image_size, Path(args.data))[2]
    probes = {"stage1": FidelityProbe(load_evaluator(Path(args.fr) / "backbone", None, True), real_faces, real_labels,
                                      protos.num_real),
              "evaluator": FidelityProbe(load_evaluator(args.evaluator, None, True), real_faces, real_labels,
                                         protos.num_real)}
    rows = virtual_rows(protos.num_real, protos.num_virtual, args.ids, args.images)
    points, grid_dir = [], RESULTS / "dit_guidance_select"
    grid_dir.mkdir(parents=True, exist_ok=True)
    for g in args.guidance:
        t0 = time.perf_counter()
        faces = sample_rows(model, cond, rows, landmarks, args.steps, g)
        point = {"guidance": g, "images": len(rows), "sample_s": time.perf_counter() - t0}
        for key, probe in probes.items():
            v = probe.measure(faces, rows)["virtual"]
            point.update({f"{key}_{k}": float(val) for k, val in v.items() if k != "count"})
        points.append(point)
        print(f"[{args.name}] g={g:g}: " + " ".join(f"{k}={v:.3f}" for k, v in point.items() if k != "guidance"),
              flush=True)
        shown = min(8, len(rows) // args.images)  # the first 8 identities, all their images
        pick = np.arange(shown * args.images)
        image_grid(list(faces[pick]), args.images, grid_dir / f"{args.name}_g{g:g}.png",
                   labels=[f"v{r - protos.num_real}" for r in rows[pick]])
    chosen = choose_guidance(points)
    for p in points:
        p["stage1_min"] = min(p["stage1_consistency_ratio"], p["stage1_separability_ratio"])
        p["label"] = f"{p['guidance']:g}" + (" (chosen)" if p["guidance"] == chosen else "")
    f3 = "{:.3f}".format
    cols = [("label", "guidance", str), ("stage1_consistency_ratio", "stage-1 C", f3),
            ("stage1_separability_ratio", "stage-1 S", f3), ("stage1_min", "min (the rule)", f3),
            ("evaluator_consistency_ratio", "evaluator C", f3), ("evaluator_separability_ratio", "evaluator S", f3),
            ("sample_s", "s to sample", "{:.0f}".format)]
    print(f"virtual C/S as ratios of the real set's by the same model; {len(rows) // args.images} identities x "
          f"{args.images}; chosen by the stage-1 model (rule: max min(C, S)); the evaluator columns play no part in it")
    print(format_table(points, cols))
    out = write_json(RESULTS / f"dit_guidance_select_{args.name}.json",
                     {"args": vars(args), "points": points, "chosen_guidance": chosen, "rule": choose_guidance.__doc__,
                      "machine": machine_info("cpu")})
    print(f"chosen guidance {chosen:g} -> {out}")


if __name__ == "__main__":
    main()
