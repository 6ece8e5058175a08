"""From unit code vectors to a saved code book: homogenise (optional) -> hierarchical codes -> files + statistics.

The chain ``build_codes`` runs after the per-identity features are in; plain NumPy/torch, no Ray.
Files in ``out_dir``: ``codes.safetensors`` + ``codes.json`` (:mod:`fr.gif.hier_codes`), ``initial_vectors.npy``
and ``code_vectors.npy`` (the homogenised vectors the codes were clustered from; a writable memory map).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fr.gif.hier_codes import CODES_FILE, build_codes, check_capacity, save_codes
from fr.gif.homogenise import HomogeniseConfig, evaluate_objective, homogenise, initial_neighbours, pick_device
from fr.gif.spread import order_kept, spread_stats

log = logging.getLogger(__name__)


def make_codebook(vectors: np.ndarray, identities: list[str], out_dir: str | Path, *, length: int, vocab: int,
                  hcfg: HomogeniseConfig, do_homogenise: bool = True, source: dict[str, Any] | None = None,
                  spread_sample: int = 2048, kmeans_sample: int = 20000, seed: int = 0,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write the code book of ``vectors [N, d]`` (label order) to ``out_dir``; returns its summary (also in codes.json)."""
    out = Path(out_dir)
    n = len(vectors)
    if len(identities) != n:
        raise ValueError(f"make_codebook: {n} vectors but {len(identities)} identities")
    check_capacity(n, length, vocab)  # before any expensive work
    if (out / CODES_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / CODES_FILE} exists; set gif.overwrite=true to rebuild the codes")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "initial_vectors.npy", np.asarray(vectors, np.float32))
    initial = np.load(out / "initial_vectors.npy", mmap_mode="r")
    summary: dict[str, Any] = {"source": source or {}, "num_identities": n, "dim": int(vectors.shape[1])}
    t0 = time.perf_counter()
    neighbours = initial_neighbours(initial, hcfg.neighbours, exact_knn_max=hcfg.exact_knn_max,
                                    block=hcfg.knn_block, seed=seed, device=pick_device(hcfg.device))
    summary["objective_before"] = evaluate_objective(initial, neighbours, hcfg)
    summary["spread_before"] = spread_stats(initial, spread_sample, seed)
    final = initial
    if do_homogenise:
        res = homogenise(initial, hcfg, out=out / "code_vectors.npy", neighbours=neighbours, overwrite=True)
        final = res.vectors
        summary.update({"homogenise_seconds": res.seconds, "homogenise_peak_step_bytes": res.peak_step_bytes,
                        "homogenise_history": res.history, "homogenise_config": asdict(hcfg)})
        summary["objective_after"] = evaluate_objective(final, neighbours, hcfg)
        summary["spread_after"] = spread_stats(final, spread_sample, seed)
        summary["order_kept"] = order_kept(initial, final, neighbours, spread_sample, hcfg.partners, seed)
    log.info("codebook: vectors ready in %.1f s; clustering %d identities into l=%d, K=%d codes",
             time.perf_counter() - t0, n, length, vocab)
    t1 = time.perf_counter()
    codes, stats = build_codes(final, length, vocab, seed=seed, kmeans_sample=kmeans_sample)
    summary.update({"codes": stats, "clustering_seconds": time.perf_counter() - t1,
                    "homogenised": bool(do_homogenise)})
    save_codes(out, codes, vocab, identities, summary, overwrite=overwrite)
    return summary


def flat_summary(summary: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics of a code-book summary for MLflow (``objective_before/uniformity``, ``codes/displaced_l0``...)."""
    flat: dict[str, float] = {}
    for group in ("objective_before", "objective_after", "spread_before", "spread_after", "order_kept"):
        for k, v in summary.get(group, {}).items():
            flat[f"{group}/{k}"] = float(v)
    codes = summary.get("codes", {})
    for j, v in enumerate(codes.get("displaced_per_level", [])):
        flat[f"codes/displaced_l{j}"] = float(v)
    for j, v in enumerate(codes.get("tokens_used_per_level", [])):
        flat[f"codes/tokens_used_l{j}"] = float(v)
    for k in ("leaf_size_mean", "leaf_size_max", "unique_codes"):
        if k in codes:
            flat[f"codes/{k}"] = float(codes[k])
    flat["codes/collisions_resolved"] = float(sum(codes.get("displaced_per_level", [])))
    for k in ("homogenise_seconds", "clustering_seconds", "homogenise_peak_step_bytes"):
        if k in summary:
            flat[k] = float(summary[k])
    return flat
