"""AugGen's mixed-class conditions: ``c* = alpha c_i + beta c_j`` for seeded random pairs of distinct classes.

A mixed row is fed to the class-conditional generator exactly like a one-hot row (the EDM2 label path is
linear in the class vector), so one (alpha, beta) and K pairs give K new classes, M images each.
"""
from __future__ import annotations

import numpy as np


class MixingError(ValueError):
    """Mixing weights or pairs that do not fit."""


def check_weights(alpha: float, beta: float, lo: float = 0.0, hi: float = 2.0, where: str = "alpha/beta") -> None:
    """MixingError unless ``lo < alpha, beta <= hi`` (both finite)."""
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not np.isfinite(v) or not lo < v <= hi:
            raise MixingError(f"{where}: {name}={v} outside ({lo}, {hi}]")


def sample_pairs(num_classes: int, k: int, seed: int, classes: np.ndarray | None = None) -> np.ndarray:
    """``[K, 2]`` int64 pairs (i, j), i != j, no pair drawn twice (either order), from ``classes`` (default all)."""
    pool = np.arange(num_classes) if classes is None else np.asarray(classes, dtype=np.int64)
    if len(pool) < 2:
        raise MixingError(f"mixing needs at least 2 classes, got {len(pool)}")
    max_pairs = len(pool) * (len(pool) - 1) // 2
    if k > max_pairs:
        raise MixingError(f"{k} distinct pairs requested from {len(pool)} classes (at most {max_pairs})")
    rng = np.random.default_rng([seed, 7919])
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < k:
        i, j = rng.choice(len(pool), 2, replace=False)
        a, b = int(pool[i]), int(pool[j])
        if (min(a, b), max(a, b)) in seen:
            continue
        seen.add((min(a, b), max(a, b)))
        out.append((a, b))
    return np.asarray(out, dtype=np.int64).reshape(k, 2)


def mixed_class_vectors(pairs: np.ndarray, alpha: float, beta: float, num_classes: int) -> np.ndarray:
    """AugGen's mixed condition, one row per pair: ``c* = alpha c_i + beta c_j`` (float32 ``[K, C]``)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= num_classes):
        raise MixingError(f"pair classes must be in [0, {num_classes}), got range [{pairs.min()}, {pairs.max()}]")
    if np.any(pairs[:, 0] == pairs[:, 1]):
        raise MixingError("a mixing pair needs two distinct classes")
    c = np.zeros((len(pairs), num_classes), np.float32)
    rows = np.arange(len(pairs))
    c[rows, pairs[:, 0]] += np.float32(alpha)
    c[rows, pairs[:, 1]] += np.float32(beta)
    return c


def mixed_rows(pairs: np.ndarray, alpha: float, beta: float, num_classes: int, images_per_pair: int,
               seed: int) -> dict[str, np.ndarray]:
    """Every image of the K new classes: ``class_vector`` [K*M, C], ``pair`` [K*M] (the new class index),
    ``seed`` [K*M] (a function of (seed, pair index, image index) only, so any subset regenerates the same)."""
    k = len(pairs)
    vectors = mixed_class_vectors(pairs, alpha, beta, num_classes)
    pair = np.repeat(np.arange(k), images_per_pair)
    image = np.tile(np.arange(images_per_pair), k)
    seeds = (np.int64(seed) * 1_000_003 + pair.astype(np.int64) * 10_007 + image) % (2 ** 62)
    return {"class_vector": vectors[pair], "pair": pair, "seed": seeds}


def repro_rows(classes: np.ndarray, num_classes: int, images_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """D_repro: one-hot rows of the training ``classes`` (``label`` = the class), M images each, seeded per row."""
    classes = np.asarray(classes, dtype=np.int64)
    if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
        raise MixingError(f"repro classes must be in [0, {num_classes})")
    label = np.repeat(classes, images_per_class)
    image = np.tile(np.arange(images_per_class), len(classes))
    vectors = np.zeros((len(label), num_classes), np.float32)
    vectors[np.arange(len(label)), label] = 1.0
    seeds = (np.int64(seed) * 1_000_003 + label * 10_007 + image + 5) % (2 ** 62)
    return {"class_vector": vectors, "label": label, "seed": seeds}
