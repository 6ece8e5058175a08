"""Measures of how unit vectors spread on the sphere and how well a similarity order is kept.

Used for the homogenised code vectors (tests, ``build_codes`` metrics) and for class centroids
(``evaluation.minority_collapse``). Everything is chunked over the keys, so memory is ``O(sample x chunk)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fr.gif.homogenise import chunked_topk


def max_cosine_to_others(vectors: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """For each row index in ``rows``: the largest cosine of that (unit) row to any other row. float64 ``[len(rows)]``."""
    q = torch.as_tensor(np.asarray(vectors[rows], np.float32))
    rows_t = torch.as_tensor(np.asarray(rows, np.int64))
    best = torch.full((len(rows),), -float("inf"))
    n = vectors.shape[0]
    for s in range(0, n, chunk):
        keys = torch.from_numpy(np.array(vectors[s:s + chunk], dtype=np.float32))  # a copy: may be a read-only map
        sim = q @ keys.t()
        ids = torch.arange(s, s + keys.shape[0])
        sim = sim.masked_fill(rows_t[:, None] == ids[None, :], -float("inf"))
        best = torch.maximum(best, sim.max(dim=1).values)
    return best.double().numpy()


def sample_rows(n: int, sample: int, seed: int) -> np.ndarray:
    if sample <= 0 or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def spread_stats(vectors: np.ndarray, sample: int = 2048, seed: int = 0) -> dict[str, float]:
    """Mean max-cosine to the others, the smallest angle (degrees) and the mean pairwise cosine, over a row sample."""
    rows = sample_rows(vectors.shape[0], sample, seed)
    mx = max_cosine_to_others(vectors, rows)
    sub = np.asarray(vectors[rows], np.float64)
    gram = sub @ sub.T
    off = gram[~np.eye(len(rows), dtype=bool)]
    return {"mean_max_cos": float(mx.mean()),
            "min_angle_deg": float(math.degrees(math.acos(min(1.0, float(mx.max()))))),
            "mean_pair_cos": float(off.mean()) if off.size else float("nan")}


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(dim=1).argsort(dim=1).double()


def order_kept(initial: np.ndarray, final: np.ndarray, neighbours: np.ndarray, sample: int = 2048,
               partners: int = 32, seed: int = 0) -> dict[str, float]:
    """How much of the initial similarity order survives in ``final``.

    For sampled anchors, over each anchor's ``k`` initial neighbours plus ``partners`` random identities:
    ``rank_corr`` the mean Spearman correlation of initial vs final cosines, ``nbr_order_corr`` the same over
    the ``k`` neighbours only, and ``knn_recall`` the fraction of the initial k neighbours that are still among
    the anchor's k nearest in ``final`` (exact, chunked).
    """
    n, k = neighbours.shape
    rows = sample_rows(n, sample, seed)
    gen = np.random.default_rng(seed + 1)
    rand = gen.integers(0, n, size=(len(rows), partners))
    cols = np.concatenate([neighbours[rows], rand], 1)

    def cosines(v: np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(v[rows], np.float64))
        b = torch.as_tensor(np.asarray(v[cols.ravel()], np.float64)).view(len(rows), cols.shape[1], -1)
        return torch.einsum("bd,bkd->bk", a, b)

    c0, c1 = cosines(initial), cosines(final)

    def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
        rx, ry = _ranks(x), _ranks(y)
        rx, ry = rx - rx.mean(1, keepdim=True), ry - ry.mean(1, keepdim=True)
        return float(((rx * ry).sum(1) / (rx.norm(dim=1) * ry.norm(dim=1)).clamp_min(1e-12)).mean())

    q = torch.as_tensor(np.asarray(final[rows], np.float32))
    keys = torch.from_numpy(np.array(final, dtype=np.float32))  # a copy (all N rows: fine up to ~1e7 x 64)
    now = chunked_topk(q, torch.as_tensor(rows), keys, torch.arange(n), k, 65536).numpy()
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(now, neighbours[rows])])
    return {"rank_corr": spearman(c0, c1), "nbr_order_corr": spearman(c0[:, :k], c1[:, :k]) if k > 1 else 1.0,
            "knn_recall": float(recall)}
