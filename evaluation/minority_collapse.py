"""Minority collapse (GIF supplement §6): do the class centroids of tail classes (fewest images) crowd together?

Under softmax cross-entropy the push force dominates the prototypes of minority classes and drives them into
one subspace. We measure the effect on the *embedding* side, for any trained backbone on its training set:

* classes are put in ``bins`` quantile bins of their image count (bin 0 = tail, the last = head);
* ``centroid`` of a class: the re-normalised mean of its unit embeddings (:func:`evaluation.properties.class_centres`);
* per bin: ``mean_max_cos`` (each centroid's largest cosine to any other centroid, averaged: high = crowded),
  ``within_cos`` (mean pairwise cosine among the bin's centroids: high = the bin shares a subspace) and
  ``mean_cos_all`` (mean cosine to every other centroid);
* verification by class size: the toy verification identities are held out (they have no class size), so we
  verify **training-set** pairs instead: genuine pairs of one class and impostor pairs of two classes of the same
  bin, accuracy at the one threshold that is best over all bins. This measures how separable the learned
  classes of each size are, not generalisation to new people.

Collapse shows as ``tail - head`` > 0 in ``mean_max_cos`` / ``within_cos``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.embed import Embeddings, embed_shards
from evaluation.properties import class_centres
from evaluation.report import pair_cosines, sample_pairs
from evaluation.verification import best_threshold
from fr.data.shards import list_shards, read_dataset_json
from fr.gif.spread import max_cosine_to_others


def class_size_bins(counts: np.ndarray, bins: int) -> np.ndarray:
    """Bin ``[C]`` of each class by quantiles of its image count (0 = fewest images).

    A count equal to a quantile edge goes to the lower bin, so ties stay together and the many classes at the
    minimum size of a long-tailed set are the tail bin (some bins may then be empty and are skipped).
    """
    counts = np.asarray(counts)
    if bins < 1:
        raise ValueError(f"gif.collapse_bins must be >= 1, got {bins}")
    edges = np.quantile(counts, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, counts, side="left").astype(np.int64)


def centroid_collapse(centroids: np.ndarray, counts: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Per class-size bin: classes, size range, ``mean_max_cos``, ``within_cos``, ``mean_cos_all``."""
    c = np.asarray(centroids, np.float64)
    which = class_size_bins(counts, bins)
    max_cos = max_cosine_to_others(c, np.arange(len(c)))
    total = c.sum(0)
    cos_all = (c @ total - 1.0) / (len(c) - 1)  # mean cosine to every other (unit) centroid
    out = []
    for b in range(bins):
        rows = np.flatnonzero(which == b)
        if not rows.size:
            continue
        sub = c[rows]
        gram = sub @ sub.T
        within = float(gram[~np.eye(len(rows), dtype=bool)].mean()) if len(rows) > 1 else float("nan")
        out.append({"bin": b, "classes": int(rows.size), "size_min": int(counts[rows].min()),
                    "size_max": int(counts[rows].max()), "mean_max_cos": float(max_cos[rows].mean()),
                    "within_cos": within, "mean_cos_all": float(cos_all[rows].mean())})
    return out


def verification_by_size(emb: Embeddings, counts: np.ndarray, bins: int, pairs_per_bin: int = 2000,
                         seed: int = 0) -> list[dict[str, float]]:
    """Training-set pair accuracy per class-size bin at the threshold best over all bins (see module doc)."""
    which = class_size_bins(counts, bins)[emb.labels]
    per_bin = []
    for b in range(bins):
        rows = np.flatnonzero(which == b)
        if len(np.unique(emb.labels[rows])) < 2:
            continue
        i, j, same = sample_pairs(emb.labels[rows], pairs_per_bin, seed + b)
        per_bin.append((b, pair_cosines(emb.embeddings, rows[i], rows[j]), same))
    if not per_bin:
        return []
    threshold, _ = best_threshold(np.concatenate([p[1] for p in per_bin]), np.concatenate([p[2] for p in per_bin]))
    out = []
    for b, sims, same in per_bin:
        acc = float(((sims > threshold) == same).mean())
        out.append({"bin": b, "pairs": int(len(same)), "accuracy": acc, "threshold": threshold,
                    "genuine_mean_cos": float(sims[same].mean()), "impostor_mean_cos": float(sims[~same].mean())})
    return out


def collapse_metrics(centroid_bins: list[dict], verify_bins: list[dict]) -> dict[str, float]:
    """Flat metrics (``collapse/bin0/mean_max_cos``, ..., ``collapse/tail_minus_head/...``) for MLflow."""
    m: dict[str, float] = {}
    for rec in centroid_bins:
        for k in ("mean_max_cos", "within_cos", "mean_cos_all"):
            m[f"collapse/bin{rec['bin']}/{k}"] = rec[k]
    for rec in verify_bins:
        m[f"collapse/bin{rec['bin']}/train_pair_acc"] = rec["accuracy"]
    if len(centroid_bins) > 1:
        tail, head = centroid_bins[0], centroid_bins[-1]
        for k in ("mean_max_cos", "within_cos"):
            m[f"collapse/tail_minus_head/{k}"] = tail[k] - head[k]
    if len(verify_bins) > 1:
        m["collapse/tail_minus_head/train_pair_acc"] = verify_bins[0]["accuracy"] - verify_bins[-1]["accuracy"]
    return m


def collapse_report(embedder, dataset_dir, bins: int = 4, batch_rows: int = 256, pairs_per_bin: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Centroid spread and training-pair accuracy per class-size bin of ``embedder`` on a shard dataset."""
    info = read_dataset_json(dataset_dir)
    emb = Embeddings.concat(list(embed_shards(embedder, list_shards(dataset_dir), info.image_size,
                                              batch_rows).values()))
    counts = np.bincount(emb.labels, minlength=info.num_classes)
    centroids = class_centres(emb.embeddings, emb.labels, info.num_classes)
    cbins = centroid_collapse(centroids, counts, bins)
    vbins = verification_by_size(emb, counts, bins, pairs_per_bin, seed)
    return {"dataset": str(dataset_dir), "bins": cbins, "verification": vbins,
            "metrics": collapse_metrics(cbins, vbins)}
