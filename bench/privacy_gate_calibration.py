"""How often the privacy gate fails sets of new people, and sets that reproduce training identities.

Pools of synthetic identities, each ``--images`` images, embedded with the evaluator (the independent one by
default), checked against the real toy training set:

* ``fresh``: toy identities never in training (another toy base seed);
* ``verify``: the toy verification identities (held-out people of the same base seed);
* ``renders``: new images (unseen nuisance seeds) of the training identities;
* ``noisy``: training images with Gaussian pixel noise (sigma ``--noise``).

For every pool and set size n in ``--sizes``, ``--draws`` random subsets of n identities (without
replacement) go through the old rule (leak fraction <= 1%) and the calibrated binomial gate
(``evaluation.gate_calibration``); the fail rates are printed and written to
``bench/results/privacy_gate_calibration.json``.

    python bench/privacy_gate_calibration.py --data runs/e14/data/toy/train --evaluator runs/e14/fr/tiny-evaluator/backbone
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.embed import embed_faces, load_evaluator, read_shard_faces  # noqa: E402
from evaluation.gate_calibration import draw_rates, new_identity_rate  # noqa: E402
from evaluation.leakage import leakage_report, real_nearest_negative  # noqa: E402
from fr.data.images import decode_image, encode_image  # noqa: E402
from fr.data.shards import list_shards, read_dataset_json  # noqa: E402
from fr.data.toyfaces import render_sample, sample_identity, toy_identity_seed, toy_sample_seed  # noqa: E402

OUT = Path("bench/results/privacy_gate_calibration.json")


def render_identities(id_seeds: list[int], images: int, first_sample: int, size: int, seed: int) -> np.ndarray:
    """uint8 [len(id_seeds) * images, S, S, 3]: ``images`` renders per identity (sample indices from
    ``first_sample``), JPEG-encoded at a random quality in 60-95 like the toy training records."""
    rng = np.random.default_rng(seed)
    out = []
    for s in id_seeds:
        ident = sample_identity(s)
        for j in range(first_sample, first_sample + images):
            img, _ = render_sample(ident, toy_sample_seed(s, j), size)
            out.append(decode_image(encode_image(img, "jpg", int(rng.integers(60, 96)))))
    return np.stack(out)


def noisy_copies(faces: np.ndarray, labels: np.ndarray, images: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``images`` training images per class with N(0, sigma^2) pixel noise (uint8), and their labels."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([np.flatnonzero(labels == k)[:images] for k in np.unique(labels)])
    noisy = faces[keep].astype(np.float32) + rng.normal(0.0, sigma, faces[keep].shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8), labels[keep]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="runs/tiny/data/toy/train", help="the real toy training shards")
    p.add_argument("--evaluator", default="runs/tiny/fr/tiny-evaluator/backbone")
    p.add_argument("--images", type=int, default=5, help="images per synthetic identity")
    p.add_argument("--pool", type=int, default=400, help="fresh identities in the pool")
    p.add_argument("--sizes", default="40,100,200")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--noise", type=float, default=8.0, help="pixel noise sigma of the noisy copies (uint8 units)")
    p.add_argument("--toy_seed", type=int, default=0, help="base seed of the training toy set (prepare: run.seed)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    info = read_dataset_json(args.data)
    size = info.image_size
    evaluator = load_evaluator(args.evaluator, None, True)
    faces, labels = zip(*(read_shard_faces(s, size) for s in list_shards(args.data)))
    faces, labels = np.concatenate(faces), np.concatenate(labels)
    real_emb = embed_faces(evaluator, faces)[0]
    k_real = info.num_classes
    train_seeds = [toy_identity_seed(args.toy_seed, i, "train") for i in range(k_real)]
    pools = {
        "fresh": [toy_identity_seed(args.toy_seed + 7919, i, "train") for i in range(args.pool)],
        "verify": [toy_identity_seed(args.toy_seed, i, "verify") for i in range(200)],
        "renders": train_seeds,
    }
    reference = real_nearest_negative(real_emb, labels, "image")
    results, report = {}, None
    for name, seeds in [*pools.items(), ("noisy", None)]:
        if seeds is None:
            imgs, lab = noisy_copies(faces, labels, args.images, args.noise, 1)
        else:
            imgs = render_identities(seeds, args.images, 10_000, size, len(seeds))
            lab = np.repeat(np.arange(len(seeds)), args.images)
        emb, _ = embed_faces(evaluator, imgs)
        report = leakage_report(emb, lab, real_emb, labels, "image", threshold_quantile=args.quantile,
                                real_reference=reference)
        rate = new_identity_rate(report.real_identity_max, report.real_level)
        usable = [n for n in sizes if n <= report.identity_labels.size]
        rates = draw_rates(report.identity_max, report.real_level, rate, usable, args.draws, args.alpha, 0.01)
        results[name] = {"identities": int(report.identity_labels.size), "pool_leak_fraction": report.leak_fraction,
                         "rates": {str(n): r for n, r in rates.items()}}
        print(f"{name}: {report.identity_labels.size} identities, pool leak fraction {report.leak_fraction:.4f}", flush=True)
    header = f"{'pool':8s} {'kind':16s} {'n':>4s} {'crit k':>6s} {'old fail':>9s} {'new fail':>9s}"
    lines = [f"real level {report.real_level:.4f} (q {args.quantile}), expected new-people rate p0 {rate:.4f}, "
             f"alpha {args.alpha}, {args.draws} draws", header]
    for name, r in results.items():
        kind = "new people" if name in ("fresh", "verify") else "reproduce train"
        for n, v in r["rates"].items():
            lines.append(f"{name:8s} {kind:16s} {n:>4s} {v['critical_leaks']:6d} {v['fraction_fail_rate']:9.3f} "
                         f"{v['binomial_fail_rate']:9.3f}")
    print("\n".join(lines))
    out = {"args": vars(args), "real_level": report.real_level, "expected_rate": rate, "pools": results,
           "seconds": time.perf_counter() - t0, "machine": "2-vCPU VM shared with other work"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"-> {args.out} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
