"""Hierarchical identity codes: integer sequences ``[N, l]`` over a vocabulary of ``K`` tokens per level.

Recursive balanced clustering of the (homogenised) code vectors. A node at level ``j`` holding ``n`` identities
(``n <= K^(l-j)``, checked at the root: ``K^l >= N`` or a clear error) is split by k-means (sklearn) into
``m = min(K, n)`` clusters, and identities are then assigned under a capacity ``ceil(n / m)`` per cluster
(:func:`balanced_assign`), so subtrees stay balanced and every child fits its ``K^(l-j-1)`` codes.

Tokens are made comparable across nodes (one token classifier per level sees every node): each level ``j`` has
``K`` fixed random unit "anchor" directions; a node's children get the tokens whose anchors best match their
residual directions ``normalize(c_child - c_node)`` (a Hungarian assignment, scipy), so token ``t`` at level
``j`` means roughly "moved towards anchor t" wherever it occurs. At the last level the ``n <= K`` identities of
a leaf are matched to distinct tokens the same way (their residuals from the leaf mean): **distinct tokens within
a leaf is what makes every code unique**; :func:`build_codes` verifies uniqueness and raises if it ever fails.
``displaced`` counts identities that the capacity moved away from their nearest centre (the collisions the
balancing resolved).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CODES_FILE, META_FILE = "codes.safetensors", "codes.json"


class CodeCapacityError(ValueError):
    """``K^l`` codes cannot hold the identities."""


def check_capacity(num_identities: int, length: int, vocab: int) -> None:
    if length < 1 or vocab < 2:
        raise CodeCapacityError(f"gif.code_length must be >= 1 and gif.vocab_size >= 2, got l={length}, K={vocab}")
    if vocab ** length < num_identities:
        need = math.ceil(math.log(num_identities) / math.log(vocab))
        raise CodeCapacityError(f"gif: K^l = {vocab}^{length} = {vocab ** length} codes cannot hold {num_identities} "
                                f"identities; raise gif.code_length to >= {need} or gif.vocab_size")


def balanced_assign(x: np.ndarray, centres: np.ndarray, capacity: int, top: int = 8) -> tuple[np.ndarray, int]:
    """Assign rows of ``x`` to ``centres`` with at most ``capacity`` rows each, nearest first.

    Rounds of proposals: every unassigned row proposes to its next-nearest centre among its ``top`` nearest
    (then among all centres with room); a centre keeps its closest proposers up to its remaining room. Returns
    ``(assignment [n], displaced)`` where ``displaced`` rows did not get their nearest centre.
    """
    n, m = len(x), len(centres)
    if capacity * m < n:
        raise CodeCapacityError(f"balanced_assign: {m} clusters x {capacity} cannot hold {n} rows")
    # squared distances [n, m] in float32, computed in row chunks (the [n, m] matrix itself is kept: a node of
    # 1e6 identities and K = 128 needs 0.5 GB; beyond that, raise gif.code_length to shrink the root's K)
    dist = np.empty((n, m), np.float32)
    c2 = (centres ** 2).sum(1)
    for s in range(0, n, 65536):
        xs = x[s:s + 65536]
        dist[s:s + 65536] = (xs ** 2).sum(1)[:, None] - 2.0 * xs @ centres.T + c2[None, :]
    t = min(top, m)
    cand = np.argpartition(dist, t - 1, axis=1)[:, :t] if t < m else np.tile(np.arange(m), (n, 1))
    cand = np.take_along_axis(cand, np.take_along_axis(dist, cand, 1).argsort(1), 1)
    assign = np.full(n, -1, np.int64)
    room = np.full(m, capacity, np.int64)
    nearest = cand[:, 0].copy()
    for candidates in (cand, None):
        ptr = np.zeros(n, np.int64)
        while True:
            free = np.flatnonzero(assign < 0)
            if candidates is None:  # leftovers: every centre that still has room
                open_ = np.flatnonzero(room > 0)
                if not free.size:
                    break
                sub = dist[np.ix_(free, open_)]
                order = sub.argsort(1)
                width = order.shape[1]
                alive = ptr[free] < width
                free = free[alive]
                if not free.size:
                    break
                prop = open_[order[alive, ptr[free]]]
            else:
                free = free[ptr[free] < candidates.shape[1]]
                if not free.size:
                    break
                prop = candidates[free, ptr[free]]
            cost = dist[free, prop]
            order_p = np.lexsort((cost, prop))
            free, prop = free[order_p], prop[order_p]
            first = np.searchsorted(prop, prop, side="left")
            rank = np.arange(len(prop)) - first
            ok = rank < room[prop]
            assign[free[ok]] = prop[ok]
            np.subtract.at(room, prop[ok], 1)
            ptr[free[~ok]] += 1
    if (assign < 0).any():
        raise RuntimeError("balanced_assign: rows left unassigned (capacity bookkeeping error)")
    return assign, int((assign != nearest).sum())


def level_anchors(vocab: int, dim: int, level: int, seed: int) -> np.ndarray:
    """``K`` fixed random unit directions of one level (the meaning of its tokens)."""
    a = np.random.default_rng([seed, 7919, level]).standard_normal((vocab, dim))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def match_tokens(residuals: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Distinct tokens for ``len(residuals) <= K`` residual directions: the Hungarian best match to the anchors."""
    from scipy.optimize import linear_sum_assignment

    norms = np.linalg.norm(residuals, axis=1, keepdims=True)
    unit = np.divide(residuals, norms, out=np.zeros_like(residuals), where=norms > 1e-12)
    rows, cols = linear_sum_assignment(-(unit @ anchors.T))
    tokens = np.empty(len(residuals), np.int64)
    tokens[rows] = cols
    return tokens


@dataclass
class _Stats:
    displaced: list[int]
    nodes: list[int]
    leaf_sizes: list[int] = field(default_factory=list)


def _split(x: np.ndarray, m: int, seed: int, kmeans_sample: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if m >= len(x):
        return x.copy()
    fit = x
    if len(x) > kmeans_sample:
        fit = x[np.random.default_rng(seed).choice(len(x), kmeans_sample, replace=False)]
    km = KMeans(n_clusters=m, n_init=1, max_iter=50, random_state=seed).fit(fit)
    return km.cluster_centers_


def _build(x: np.ndarray, idx: np.ndarray, level: int, codes: np.ndarray, anchors: list[np.ndarray], vocab: int,
           seed: int, kmeans_sample: int, stats: _Stats) -> None:
    length = codes.shape[1]
    stats.nodes[level] += 1
    centre = x[idx].mean(0)
    if level == length - 1:  # leaf: distinct tokens make the codes unique
        codes[idx, level] = match_tokens(x[idx] - centre, anchors[level])
        stats.leaf_sizes.append(len(idx))
        return
    n = len(idx)
    m = min(vocab, n)
    centres = _split(x[idx], m, seed + stats.nodes[level], kmeans_sample)
    assign, displaced = balanced_assign(x[idx], centres, math.ceil(n / m))
    stats.displaced[level] += displaced
    used = np.unique(assign)
    child_centres = np.stack([x[idx[assign == c]].mean(0) for c in used])
    tokens = match_tokens(child_centres - centre, anchors[level])
    for c, tok in zip(used, tokens):
        members = idx[assign == c]
        codes[members, level] = tok
        _build(x, members, level + 1, codes, anchors, vocab, seed, kmeans_sample, stats)


def build_codes(vectors: np.ndarray, length: int, vocab: int, seed: int = 0,
                kmeans_sample: int = 20000) -> tuple[np.ndarray, dict[str, Any]]:
    """``(codes int64 [N, length] in [0, vocab), stats)``, every row unique (verified)."""
    x = np.asarray(vectors, np.float64)
    n = len(x)
    check_capacity(n, length, vocab)
    codes = np.full((n, length), -1, np.int64)
    anchors = [level_anchors(vocab, x.shape[1], j, seed) for j in range(length)]
    stats = _Stats([0] * length, [0] * length)
    _build(x, np.arange(n), 0, codes, anchors, vocab, seed, kmeans_sample, stats)
    unique = len(np.unique(codes, axis=0))
    if unique != n or codes.min() < 0:
        raise RuntimeError(f"build_codes: {n - unique} duplicate codes (a bug: leaves assign distinct tokens)")
    leaf = np.asarray(stats.leaf_sizes)
    return codes, {"displaced_per_level": stats.displaced, "nodes_per_level": stats.nodes,
                   "leaf_size_mean": float(leaf.mean()), "leaf_size_max": int(leaf.max()),
                   "tokens_used_per_level": [int(len(np.unique(codes[:, j]))) for j in range(length)],
                   "unique_codes": unique}


# ------------------------------------------------------------------------------------------------
# files


@dataclass
class CodeBook:
    codes: np.ndarray  # int64 [N, l]
    length: int
    vocab: int
    identities: list[str]
    meta: dict[str, Any]


def save_codes(directory: str | Path, codes: np.ndarray, vocab: int, identities: list[str], meta: dict[str, Any],
               overwrite: bool = False) -> Path:
    """``<dir>/codes.safetensors`` (tensor ``codes`` int64 [N, l]) + ``<dir>/codes.json``; refuses to overwrite."""
    import torch
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / CODES_FILE).exists() and not overwrite:
        raise FileExistsError(f"{d / CODES_FILE} exists; refusing to overwrite it (gif.overwrite=true to replace)")
    if codes.ndim != 2 or len(identities) != codes.shape[0]:
        raise ValueError(f"save_codes: codes {codes.shape} and {len(identities)} identities disagree")
    tmp = d / (CODES_FILE + ".tmp")
    save_file({"codes": torch.as_tensor(np.ascontiguousarray(codes, np.int64))}, str(tmp))
    os.replace(tmp, d / CODES_FILE)
    info = {"length": int(codes.shape[1]), "vocab": int(vocab), "num_identities": int(codes.shape[0]),
            **meta, "identities": list(identities)}
    (d / META_FILE).write_text(json.dumps(info, indent=1))
    return d


def load_codes(directory: str | Path) -> CodeBook:
    """The code book of a ``build_codes`` output directory; ValueError naming the file when it is inconsistent."""
    from safetensors.numpy import load_file

    d = Path(directory)
    for f in (CODES_FILE, META_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"identity codes: {d / f} not found (run build_codes, or set train_fr.codes)")
    codes = load_file(str(d / CODES_FILE)).get("codes")
    meta = json.loads((d / META_FILE).read_text())
    if codes is None or codes.ndim != 2:
        raise ValueError(f"{d / CODES_FILE}: expected an int tensor 'codes' [N, l]")
    length, vocab, identities = int(meta["length"]), int(meta["vocab"]), list(meta["identities"])
    if codes.shape != (len(identities), length) or codes.min() < 0 or codes.max() >= vocab:
        raise ValueError(f"{d}: codes {codes.shape} in [{codes.min()}, {codes.max()}] do not fit l={length}, "
                         f"K={vocab}, {len(identities)} identities ({META_FILE})")
    rest = {k: v for k, v in meta.items() if k not in ("length", "vocab", "identities")}
    return CodeBook(codes.astype(np.int64), length, vocab, identities, rest)
