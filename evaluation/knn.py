"""Exact cosine top-k search in bounded memory (chunked over queries and keys).

Inputs may be numpy arrays, numpy memmaps or torch tensors of shape [N, d]; rows are L2-normalised
chunk by chunk, so a dataset of 1e6 embeddings never has to be normalised (or loaded) as a whole.
At most ``query_chunk x key_chunk`` similarities are alive at once; a running top-k per query is
merged with each key chunk's top-k.

Ties are broken consistently: among equal similarities the smaller key index wins, and results are
ordered by (similarity descending, key index ascending). Keys removed by ``exclude_self`` or by label
exclusion never appear; when fewer than ``k`` keys remain for a query the missing slots hold
similarity ``-inf`` and index ``-1``.

We do not use faiss: it is not a dependency here, and its GPU flat index has no per-query label
exclusion; a torch matmul + topk per block is exact and runs on any device.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

_TIE_BATCH_DIVISOR = 8  # rows with ties at the top-k boundary are re-ranked ceil(qc/8) at a time
_MAX_KEY_CHUNK = 1 << 24  # key positions are ranked through float32 weights, exact below 2**24


def _check_matrix(x: ArrayLike, name: str) -> None:
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise ValueError(f"{name} must be a numpy array/memmap or torch tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, d] with N, d > 0, got {tuple(x.shape)}")


def _check_labels(labels: ArrayLike, n: int, name: str) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        ok = not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool)
        t = labels
    else:
        arr = np.asarray(labels)
        ok = np.issubdtype(arr.dtype, np.integer)
        t = torch.from_numpy(arr.astype(np.int64)) if ok else None
    if not ok:
        raise ValueError(f"{name} must hold integers, got dtype {labels.dtype}")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    return t.to(torch.int64)


def normalised_rows(
    x: ArrayLike,
    start: int,
    stop: int,
    *,
    name: str = "embeddings",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rows ``x[start:stop]`` as an L2-normalised tensor; ValueError on zero-norm or non-finite rows."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    block = x[start:stop]
    if isinstance(block, torch.Tensor):
        t = block.to(device=device, dtype=work)
    else:  # a private copy: memmaps may be read-only
        t = torch.from_numpy(np.array(block, dtype=np.float64 if work == torch.float64 else np.float32)).to(device)
    norms = torch.linalg.vector_norm(t, dim=1)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        rows = (torch.nonzero(bad).flatten()[:5] + start).tolist()
        raise ValueError(f"{name} has zero-norm or non-finite rows (first: {rows}); cosine is undefined")
    return (t / norms[:, None]).to(dtype)


def memory_bound_bytes(query_chunk: int, key_chunk: int, k: int, d: int, element_bytes: int = 4) -> int:
    """Upper bound on the working memory (bytes) of one ``topk_cosine`` block step.

    Counted (inputs and the [Q, k] outputs excluded):
    - similarity block ``qc*kc*element_bytes`` plus one boolean mask ``qc*kc`` (label exclusion or
      the tie check; never both at once);
    - tie re-ranking of at most ``ceil(qc/8)`` rows: a row copy, a boolean and a float32 rank
      weight each, ``ceil(qc/8)*kc*(element_bytes+5)``, plus the ``kc`` float32 rank weights;
    - query and key chunks, raw float32 copy and normalised copy: ``(qc+kc)*d*(4+element_bytes)``;
    - label chunks ``(qc+kc)*8`` and per-row counters ``4*qc*8``;
    - running top-k, block top-k, their concatenation and sort outputs: ``8*qc*k*(4+8)``.
    """
    for name, v in (("query_chunk", query_chunk), ("key_chunk", key_chunk), ("k", k), ("d", d)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    qc, kc, eb = query_chunk, key_chunk, element_bytes
    tie_rows = math.ceil(qc / _TIE_BATCH_DIVISOR)
    return (
        qc * kc * (eb + 1)
        + tie_rows * kc * (eb + 5)
        + kc * 4
        + (qc + kc) * d * (4 + eb)
        + (qc + kc) * 8
        + 4 * qc * 8
        + 8 * qc * k * (4 + 8)
    )


def _similarity_block(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of normalised rows: [qc, d] x [kc, d] -> [qc, kc]."""
    return q @ keys.T


def _order_ties(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (value descending, index ascending)."""
    indices, perm = torch.sort(indices, dim=1)
    values = values.gather(1, perm)
    values, perm = torch.sort(values, dim=1, descending=True, stable=True)
    return values, indices.gather(1, perm)


def _block_topk(sim: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``kk`` of each row of ``sim`` with ties at the boundary resolved to the smallest index.

    ``torch.topk`` picks arbitrarily among equal values at the k-th position; rows where more entries
    equal the k-th value than were selected are re-ranked exactly (in batches, to bound memory).
    """
    # one extra column tells whether an unselected entry ties with the k-th value, without a full
    # [rows, cols] equality mask (its int64 sum would double the block's memory)
    extra = min(kk + 1, sim.shape[1])
    values, indices = torch.topk(sim, extra, dim=1)
    tie_beyond = values[:, kk] == values[:, kk - 1] if extra > kk else torch.zeros(sim.shape[0], dtype=torch.bool)
    values, indices = values[:, :kk], indices[:, :kk]
    boundary = values[:, -1:]
    bad = torch.nonzero(tie_beyond.to(sim.device) & torch.isfinite(boundary[:, 0])).flatten()
    if bad.numel():
        kc = sim.shape[1]
        # larger weight for a smaller column index, so topk over weights returns indices ascending
        rank_weight = torch.arange(kc, 0, -1, device=sim.device, dtype=torch.float32)
        n_gt = (values > boundary).sum(dim=1)
        slot = torch.arange(kk, device=sim.device)
        batch = max(1, math.ceil(sim.shape[0] / _TIE_BATCH_DIVISOR))
        for s in range(0, bad.numel(), batch):
            rows = bad[s : s + batch]
            eq = sim.index_select(0, rows) == boundary.index_select(0, rows)
            weights = torch.where(eq, rank_weight, torch.zeros((), device=sim.device))
            del eq
            eq_idx = torch.topk(weights, kk, dim=1).indices  # smallest tied indices, ascending
            del weights
            g = n_gt[rows][:, None]
            from_eq = slot[None, :] >= g
            take = torch.clamp(slot[None, :] - g, min=0)
            indices[rows] = torch.where(from_eq, eq_idx.gather(1, take), indices[rows])
    return _order_ties(values, indices)


def topk_cosine(
    queries: ArrayLike,
    keys: ArrayLike,
    k: int = 1,
    *,
    query_chunk: int = 4096,
    key_chunk: int = 65536,
    exclude_self: bool = False,
    key_labels: ArrayLike | None = None,
    exclude_label_of_query: ArrayLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` cosine similarities of every query row against all key rows.

    Args:
        queries: [Q, d] embeddings (array, memmap or tensor; need not be normalised).
        keys: [K, d] embeddings.
        k: neighbours per query (``1 <= k <= K``).
        query_chunk, key_chunk: block sizes; see ``memory_bound_bytes`` for the memory this takes.
        exclude_self: queries and keys are the same set (Q == K); key i is skipped for query i.
        key_labels: [K] integer labels of the keys; requires ``exclude_label_of_query``.
        exclude_label_of_query: [Q] integer labels; keys with the query's label are skipped.
        device, dtype: where and in what precision blocks are computed.

    Returns:
        (values float32 [Q, k], indices int64 [Q, k]) on the CPU, ordered by (value desc, index asc);
        slots without a valid key hold ``-inf`` and ``-1``.
    """
    _check_matrix(queries, "queries")
    _check_matrix(keys, "keys")
    n_q, d = queries.shape
    n_k = keys.shape[0]
    if keys.shape[1] != d:
        raise ValueError(f"queries have dimension {d} but keys have {keys.shape[1]}")
    if not 1 <= k <= n_k:
        raise ValueError(f"k must be in [1, {n_k}] (number of keys), got {k}")
    if query_chunk < 1 or not 1 <= key_chunk <= _MAX_KEY_CHUNK:
        raise ValueError(f"need query_chunk >= 1 and 1 <= key_chunk <= {_MAX_KEY_CHUNK}, got {query_chunk}, {key_chunk}")
    if exclude_self and n_q != n_k:
        raise ValueError(f"exclude_self needs as many queries as keys, got {n_q} and {n_k}")
    if (key_labels is None) != (exclude_label_of_query is None):
        raise ValueError("key_labels and exclude_label_of_query must be given together")
    k_lab = q_lab = None
    if key_labels is not None:
        k_lab = _check_labels(key_labels, n_k, "key_labels").to(device)
        q_lab = _check_labels(exclude_label_of_query, n_q, "exclude_label_of_query").to(device)

    out_v = torch.empty((n_q, k), dtype=torch.float32)
    out_i = torch.empty((n_q, k), dtype=torch.int64)
    neg_inf = float("-inf")
    for q0 in range(0, n_q, query_chunk):
        q1 = min(q0 + query_chunk, n_q)
        q = normalised_rows(queries, q0, q1, name="queries", device=device, dtype=dtype)
        run_v = torch.full((q1 - q0, k), neg_inf, device=q.device, dtype=torch.float32)
        run_i = torch.full((q1 - q0, k), -1, device=q.device, dtype=torch.int64)
        for k0 in range(0, n_k, key_chunk):
            k1 = min(k0 + key_chunk, n_k)
            sim = _similarity_block(q, normalised_rows(keys, k0, k1, name="keys", device=device, dtype=dtype))
            if exclude_self and max(q0, k0) < min(q1, k1):
                rows = torch.arange(max(q0, k0), min(q1, k1), device=sim.device)
                sim[rows - q0, rows - k0] = neg_inf
            if k_lab is not None:
                same = q_lab[q0:q1, None] == k_lab[None, k0:k1]
                sim.masked_fill_(same, neg_inf)
                del same
            v, i = _block_topk(sim, min(k, k1 - k0))
            del sim
            # running entries all have smaller key indices than this block's, so a stable sort of
            # the concatenation keeps the (value desc, index asc) order
            v, perm = torch.sort(torch.cat([run_v, v.float()], dim=1), dim=1, descending=True, stable=True)
            i = torch.cat([run_i, i + k0], dim=1).gather(1, perm)
            run_v, run_i = v[:, :k], i[:, :k]
        run_i = torch.where(torch.isfinite(run_v), run_i, torch.full_like(run_i, -1))
        out_v[q0:q1] = run_v.cpu()
        out_i[q0:q1] = run_i.cpu()
    return out_v, out_i


def nearest_negative(
    queries: ArrayLike,
    query_labels: ArrayLike,
    keys: ArrayLike,
    key_labels: ArrayLike,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 cosine of each query over keys whose label differs from the query's label.

    Returns (values float32 [Q], indices int64 [Q]); ``-inf``/``-1`` where every key shares the
    query's label. ``kwargs`` go to ``topk_cosine`` (chunk sizes, device, dtype, exclude_self).
    """
    values, indices = topk_cosine(
        queries, keys, 1, key_labels=key_labels, exclude_label_of_query=query_labels, **kwargs
    )
    return values[:, 0], indices[:, 0]
