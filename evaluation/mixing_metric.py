"""AugGen's mixing metric ``m_total = m_s + m_d`` (the paper names the terms but gives no formulas).

Per new class k (a pair (i, j) mixed with (alpha, beta)), with unit embeddings ``e_{k,1..M}`` of its M
samples from the FR model trained on D_orig, its centre ``nu_k = e_bar_k / ||e_bar_k||`` and unit source
class centres ``mu_i, mu_j`` (normalised means of the real images' embeddings):

* consistency ``m_s(k) = 2 / (M (M - 1)) sum_{a<b} cos(e_a, e_b) = (||sum_a e_a||^2 - M) / (M (M - 1))``:
  the mean pairwise cosine of the samples (higher: the M images agree on one identity);
* distinctness ``m_d(k) = 1 - max(cos(nu_k, mu_i), cos(nu_k, mu_j))``: the cosine distance of the new
  class to the NEARER of its sources (higher: it is neither source; a mix that collapses onto one
  source scores ~0 even if it is far from the other);
* ``m_s = mean_k m_s(k)``, ``m_d = mean_k m_d(k)``, ``m_total = m_s + m_d``.

Both terms are cosines of the same embedding space, so neither needs a scale; their sum trades "a real
new identity" (m_s) against "a new identity" (m_d), which is the paper's stated aim.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def class_centres(embeddings: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Unit mean embedding of each class in ``classes`` (``[len(classes), d]``); ValueError for an empty class."""
    emb, labels = _unit(embeddings), np.asarray(labels)
    out = []
    for c in classes:
        rows = emb[labels == c]
        if not len(rows):
            raise ValueError(f"class {c} has no embeddings to form its centre")
        out.append(rows.mean(0))
    return _unit(np.stack(out))


def m_s(embeddings: np.ndarray) -> np.ndarray:
    """Consistency per new class: mean pairwise cosine of its M unit embeddings. ``[K, M, d] -> [K]``."""
    e = _unit(embeddings)
    m = e.shape[1]
    if m < 2:
        raise ValueError("m_s needs at least 2 images per new class")
    s = np.linalg.norm(e.sum(1), axis=-1) ** 2
    return (s - m) / (m * (m - 1))


def m_d(embeddings: np.ndarray, centre_i: np.ndarray, centre_j: np.ndarray) -> np.ndarray:
    """Distinctness per new class: ``1 - max(cos(nu_k, mu_i), cos(nu_k, mu_j))``. ``[K, M, d], [K, d], [K, d] -> [K]``."""
    nu = _unit(_unit(embeddings).mean(1))
    cos_i = (nu * _unit(centre_i)).sum(-1)
    cos_j = (nu * _unit(centre_j)).sum(-1)
    return 1.0 - np.maximum(cos_i, cos_j)


def m_total(embeddings: np.ndarray, centre_i: np.ndarray, centre_j: np.ndarray) -> dict[str, float]:
    """``{"m_s", "m_d", "m_total"}`` averaged over the K new classes (``m_total = m_s + m_d``)."""
    s = float(m_s(embeddings).mean())
    d = float(m_d(embeddings, centre_i, centre_j).mean())
    return {"m_s": s, "m_d": d, "m_total": s + d}


def best_point(results: Sequence[Mapping[str, float]], key: str = "m_total") -> dict[str, float]:
    """The grid point (a dict with alpha, beta and the metrics) with the largest ``key``; ties: the first."""
    if not results:
        raise ValueError("no grid results")
    return dict(max(results, key=lambda r: r[key]))


def plot_mixing_heatmaps(results: Sequence[Mapping[str, float]], path: str | Path | None = None,
                         keys: Sequence[str] = ("m_total", "m_s", "m_d")):
    """One heat map per metric over the (alpha, beta) grid, the best m_total point marked. Returns the figure."""
    from evaluation.plots import new_figure, save_figure

    alphas = sorted({float(r["alpha"]) for r in results})
    betas = sorted({float(r["beta"]) for r in results})
    fig = new_figure(4.2 * len(keys), 3.8)
    best = best_point(results)
    for n, key in enumerate(keys):
        grid = np.full((len(alphas), len(betas)), np.nan)
        for r in results:
            grid[alphas.index(float(r["alpha"])), betas.index(float(r["beta"]))] = r[key]
        ax = fig.add_subplot(1, len(keys), n + 1)
        im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=7)
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
        ax.set_xlabel("beta")
        ax.set_ylabel("alpha")
        ax.set_title(key)
        ax.plot(betas.index(float(best["beta"])), alphas.index(float(best["alpha"])), "r*", markersize=12)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def own_class_top1(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> dict[str, float]:
    """D_repro check: the fraction of generated faces whose nearest real class centre (cosine, over all
    rows of ``centres`` = every training class) is their own ``label``; and the chance level 1/C."""
    sim = _unit(embeddings) @ _unit(centres).T
    top1 = float((sim.argmax(1) == np.asarray(labels)).mean())
    return {"top1": top1, "chance": 1.0 / centres.shape[0], "num_images": float(len(labels))}
