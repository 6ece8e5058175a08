"""Hypersphere homogenisation of GIF code vectors: spread them over the unit sphere, keep their similarity order.

GIF's optimisation "needs no images or backbone" (supplement §8); the main paper's equation is not in our
hands, so the objective is ours. For unit vectors ``v_i`` (the initial ones ``v_i^0``), each step samples
``B`` anchors ``i``; ``N_i = (n_{i,1}, ..., n_{i,k})`` are i's k nearest initial neighbours in order of
initial cosine, ``R_i`` are ``m`` uniformly drawn identities and ``P_i = N_i u R_i``. The step loss is::

    L = 1/B sum_i [ L_unif(i) + mu * L_rank(i) ]                                         (H1)
    L_unif(i) = log( 1/|P_i| sum_{j in P_i} exp(2 t (<v_i, v_j> - 1)) )                   (H2)
    L_rank(i) = 1/k [ sum_{r=1..k-1} relu( <v_i, v_{n_{i,r+1}}> - <v_i, v_{n_{i,r}}> + delta )
                      + 1/m sum_{j in R_i} relu( <v_i, v_j> - <v_i, v_{n_{i,k}}> + delta ) ]     (H3)

(H2) is the Gaussian-potential uniformity of Wang & Isola (2020) (``||v_i - v_j||^2 = 2 - 2<v_i, v_j>`` on
the sphere) taken over the neighbours and random partners, so the closest pairs are pushed hardest; (H3) is a
hinge on consecutive ranks of the initial neighbour list, so pushing neighbours apart keeps their order, plus
a hinge keeping the k-th neighbour nearer than each random identity. The update is projected (Riemannian) SGD on the rows the step
touched, ``v <- normalize(v - lr * B * grad)``: no optimizer state, so memory is the ``[N, d]`` matrix
(a NumPy array or a writable ``np.memmap`` on disk) plus ``O(B (1 + k + m) d)`` per step on the device,
independent of ``N``. The neighbour lists are computed once (:func:`initial_neighbours`), exactly in bounded
chunks up to ``exact_knn_max`` identities, beyond that inside blocks of a random-hyperplane (LSH) ordering.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class HomogeniseConfig:
    epochs: float = 30.0  # anchor passes over the N identities: steps = ceil(epochs * N / batch)
    steps: int = 0  # > 0: this many steps instead of `epochs`
    batch: int = 1024  # anchors per step
    neighbours: int = 10  # k initial neighbours per anchor (H3)
    partners: int = 32  # m random partners per anchor (H2)
    t: float = 2.0  # uniformity temperature (H2)
    mu: float = 10.0  # weight of the order term (H1)
    delta: float = 0.0  # hinge margin between consecutive ranks (H3)
    lr: float = 0.003  # per-row step ~ lr * B * |grad|
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    log_every: int = 200
    exact_knn_max: int = 200_000  # above this, neighbours within LSH blocks
    knn_block: int = 4096  # rows per LSH block / per similarity chunk


@dataclass
class HomogeniseResult:
    vectors: np.ndarray  # [N, d] unit float32 (in memory or an np.memmap)
    neighbours: np.ndarray  # [N, k] int64, initial order
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # everything (neighbours, copy, steps)
    loop_seconds: float = 0.0  # the optimisation steps only
    peak_step_bytes: int = 0  # device bytes of the largest step's gathered rows and their gradient


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_unit_matrix(x: np.ndarray, where: str) -> None:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{where}: expected [N >= 2, d] code vectors, got shape {x.shape}")


# ------------------------------------------------------------------------------------------------
# initial neighbours (bounded memory)


def chunked_topk(rows: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor, key_ids: torch.Tensor, k: int,
                 chunk: int) -> torch.Tensor:
    """Global ids of the ``k`` most similar keys of each row (self excluded), keys scanned ``chunk`` at a time."""
    best_v = rows.new_full((rows.shape[0], k), -float("inf"))
    best_i = torch.full((rows.shape[0], k), -1, dtype=torch.long, device=rows.device)
    for s in range(0, keys.shape[0], chunk):
        kid = key_ids[s:s + chunk]
        sim = rows @ keys[s:s + chunk].t()
        sim = sim.masked_fill(ids[:, None] == kid[None, :], -float("inf"))
        vals = torch.cat([best_v, sim], 1)
        idx = torch.cat([best_i, kid[None, :].expand(rows.shape[0], -1)], 1)
        top = vals.topk(min(k, vals.shape[1]), dim=1)
        best_v, best_i = top.values, idx.gather(1, top.indices)
    return best_i


def initial_neighbours(vectors: np.ndarray, k: int, *, exact_knn_max: int = 200_000, block: int = 4096,
                       seed: int = 0, device: torch.device | str = "cpu") -> np.ndarray:
    """``[N, k]`` int64: each row's ``k`` nearest other rows by cosine, most similar first.

    Exact (chunked, ``O(block^2)`` memory) for ``N <= exact_knn_max``; otherwise rows are ordered by their
    signs on 16 random hyperplanes (LSH) and neighbours are searched within consecutive blocks of ``block``
    rows of that order (approximate, ``O(N block d)`` time).
    """
    n = vectors.shape[0]
    check_unit_matrix(vectors, "initial_neighbours")
    k = int(min(k, n - 1))
    device = torch.device(device)
    out = np.empty((n, k), np.int64)
    if n <= exact_knn_max:
        keys = torch.from_numpy(np.array(vectors, dtype=np.float32)).to(device)  # a copy: the input may be a read-only map
        key_ids = torch.arange(n, device=device)
        for s in range(0, n, block):
            out[s:s + block] = chunked_topk(keys[s:s + block], key_ids[s:s + block], keys, key_ids, k, block).cpu()
        return out
    gen = np.random.default_rng(seed)
    planes = gen.standard_normal((vectors.shape[1], 16)).astype(np.float32)
    code = np.zeros(n, np.int64)
    for s in range(0, n, 1 << 18):
        bits = (np.asarray(vectors[s:s + (1 << 18)], np.float32) @ planes) > 0
        code[s:s + len(bits)] = bits @ (1 << np.arange(16))
    order = np.argsort(code, kind="stable")
    for s in range(0, n, block):
        ids = np.sort(order[s:s + block])
        if len(ids) <= k:  # a short last block borrows the rows before it
            ids = np.sort(order[max(0, n - block):])
        rows = torch.as_tensor(np.asarray(vectors[ids], np.float32)).to(device)
        tid = torch.as_tensor(ids, device=device)
        found = chunked_topk(rows, tid, rows, tid, k, block).cpu().numpy()
        mine = np.isin(ids, order[s:s + block])
        out[ids[mine]] = found[mine]
    return out


# ------------------------------------------------------------------------------------------------
# the objective


def homogenise_loss(x: torch.Tensor, anchor: torch.Tensor, nbr: torch.Tensor, partner: torch.Tensor, t: float,
                    mu: float, delta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, mean L_unif, mean L_rank)`` of eq. (H1)-(H3); ``x`` unit rows, the others index rows of ``x``.

    ``anchor [B]``, ``nbr [B, k]`` (initial order), ``partner [B, m]``.
    """
    xa = x[anchor]  # [B, d]
    s_nbr = torch.einsum("bd,bkd->bk", xa, x[nbr])
    s_par = torch.einsum("bd,bmd->bm", xa, x[partner])
    sims = torch.cat([s_nbr, s_par], 1)
    unif = torch.logsumexp(2.0 * t * (sims - 1.0), dim=1) - math.log(sims.shape[1])  # (H2)
    consecutive = F.relu(s_nbr[:, 1:] - s_nbr[:, :-1] + delta).sum(dim=1)
    beyond = F.relu(s_par - s_nbr[:, -1:] + delta).mean(dim=1)  # the k-th neighbour vs each random partner
    rank = (consecutive + beyond) / s_nbr.shape[1]  # (H3)
    return (unif + mu * rank).mean(), unif.mean().detach(), rank.mean().detach()  # (H1)


def num_steps(cfg: HomogeniseConfig, n: int) -> int:
    """``cfg.steps`` if set, else ``ceil(epochs * n / batch)``."""
    return int(cfg.steps) if cfg.steps > 0 else int(math.ceil(cfg.epochs * n / min(cfg.batch, n)))


def _draw(n: int, neighbours: np.ndarray, cfg: HomogeniseConfig, gen: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    anchors = gen.integers(0, n, size=min(cfg.batch, n))
    partners = gen.integers(0, n - 1, size=(len(anchors), cfg.partners))
    partners += partners >= anchors[:, None]  # never the anchor itself
    return anchors, neighbours[anchors], partners


def _gather(storage: torch.Tensor, anchors: np.ndarray, nbr: np.ndarray, partners: np.ndarray,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Unique touched rows on the device and the batch's indices into them."""
    flat = np.concatenate([anchors, nbr.ravel(), partners.ravel()])
    uniq, inv = np.unique(flat, return_inverse=True)
    u = torch.as_tensor(uniq)
    x = storage.index_select(0, u.to(storage.device)).to(device, torch.float32)
    inv = torch.as_tensor(inv, device=device)
    b, k = nbr.shape
    parts = [inv[:b], inv[b:b + b * k].view(b, k), inv[b + b * k:].view(b, -1)]
    return u, x, parts


def evaluate_objective(vectors: np.ndarray, neighbours: np.ndarray, cfg: HomogeniseConfig, batches: int = 4,
                       seed: int = 12345) -> dict[str, float]:
    """Mean (H1)-(H3) over ``batches`` fixed draws (same draws whatever ``vectors``): before/after values."""
    gen = np.random.default_rng(seed)
    storage = torch.from_numpy(np.array(vectors, dtype=np.float32))  # a copy: may be a read-only map
    tot = {"objective": 0.0, "uniformity": 0.0, "rank": 0.0}
    for _ in range(batches):
        a, nb, p = _draw(len(vectors), neighbours, cfg, gen)
        _, x, (ia, inb, ip) = _gather(storage, a, nb, p, torch.device("cpu"))
        with torch.no_grad():
            loss, unif, rank = homogenise_loss(x, ia, inb, ip, cfg.t, cfg.mu, cfg.delta)
        for key, v in zip(tot, (loss, unif, rank)):
            tot[key] += float(v) / batches
    return tot


def homogenise(initial: np.ndarray, cfg: HomogeniseConfig, out: str | Path | None = None,
               neighbours: np.ndarray | None = None, overwrite: bool = False) -> HomogeniseResult:
    """Optimise (H1) from the unit rows of ``initial`` (may be memory-mapped, is never written).

    ``out``: None keeps the result in memory; a ``.npy`` path makes it a writable memory-mapped file
    (refused if it exists and not ``overwrite``), so ``N x d`` need not fit in RAM.
    """
    check_unit_matrix(initial, "homogenise")
    for name in ("steps", "batch", "neighbours", "partners", "epochs", "lr"):
        if getattr(cfg, name) < (0 if name in ("steps", "epochs") else 1e-12):
            raise ValueError(f"homogenise: gif.homogenise.{name} must be positive, got {getattr(cfg, name)}")
    n, d = initial.shape
    steps = num_steps(cfg, n)
    device = pick_device(cfg.device)
    start = time.perf_counter()
    if neighbours is None:
        neighbours = initial_neighbours(initial, cfg.neighbours, exact_knn_max=cfg.exact_knn_max,
                                        block=cfg.knn_block, seed=cfg.seed, device=device)
        log.info("homogenise: %d x %d neighbour lists in %.1f s", n, neighbours.shape[1], time.perf_counter() - start)
    if out is None:
        vectors = np.array(initial, dtype=np.float32, copy=True)
    else:
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"homogenise: {out} exists; refusing to overwrite it")
        vectors = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, d))
        for s in range(0, n, 1 << 18):
            vectors[s:s + (1 << 18)] = initial[s:s + (1 << 18)]
    storage = torch.from_numpy(vectors)
    gen = np.random.default_rng(cfg.seed)
    history, peak = [], 0
    loop_start = time.perf_counter()
    for step in range(1, steps + 1):
        a, nb, p = _draw(n, neighbours, cfg, gen)
        u, x, (ia, inb, ip) = _gather(storage, a, nb, p, device)
        x.requires_grad_(True)
        loss, unif, rank = homogenise_loss(x, ia, inb, ip, cfg.t, cfg.mu, cfg.delta)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            grad = grad - (grad * x).sum(1, keepdim=True) * x  # tangent component (Riemannian gradient)
            new = F.normalize(x - cfg.lr * len(a) * grad, dim=1)
        storage.index_copy_(0, u, new.to(storage.device, storage.dtype))
        peak = max(peak, 2 * x.numel() * 4)
        if step % cfg.log_every == 0 or step == steps:
            rec = {"step": step, "objective": float(loss.detach()), "uniformity": float(unif), "rank": float(rank)}
            history.append(rec)
            log.info("homogenise step %d/%d: objective %.4f (uniformity %.4f, rank %.5f)", step, steps,
                     rec["objective"], rec["uniformity"], rec["rank"])
    loop_seconds = time.perf_counter() - loop_start
    if isinstance(vectors, np.memmap):
        vectors.flush()
    return HomogeniseResult(vectors, neighbours, history, time.perf_counter() - start, loop_seconds, peak)


def config_dict(cfg: HomogeniseConfig) -> dict[str, Any]:
    return asdict(cfg)
