"""Figures of GIF's minority-collapse measure and of the code-vector homogenisation."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from matplotlib.figure import Figure

from evaluation.plots import PathLike, new_figure, save_figure
from fr.gif.spread import max_cosine_to_others, sample_rows


def plot_collapse(reports: Mapping[str, Mapping[str, Any]], path: PathLike | None = None) -> Figure:
    """Per class-size bin (tail -> head), one line per model: centroid ``mean_max_cos``, ``within_cos`` and
    training-pair accuracy (reports of :func:`evaluation.minority_collapse.collapse_report`)."""
    fig = new_figure(12.0, 4.0)
    axes = fig.subplots(1, 3)
    for name, rep in reports.items():
        labels = [f"{b['size_min']}-{b['size_max']}" for b in rep["bins"]]
        x = np.arange(len(labels))
        axes[0].plot(x, [b["mean_max_cos"] for b in rep["bins"]], marker="o", label=name)
        axes[1].plot(x, [b["within_cos"] for b in rep["bins"]], marker="o", label=name)
        pos = {b["bin"]: i for i, b in enumerate(rep["bins"])}  # empty bins are skipped: plot by position
        vx = [pos[v["bin"]] for v in rep["verification"] if v["bin"] in pos]
        axes[2].plot(vx, [v["accuracy"] for v in rep["verification"] if v["bin"] in pos], marker="o", label=name)
        for ax in axes:
            ax.set_xticks(x, labels, fontsize=7)
    titles = ("centroid max-cos to others", "mean cos within the bin", "training-pair accuracy")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("images per class (tail -> head)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_spread_before_after(initial: np.ndarray, final: np.ndarray, path: PathLike | None = None,
                             sample: int = 2048, seed: int = 0) -> Figure:
    """Histogram of each code vector's max cosine to the others, before and after homogenisation (a row sample)."""
    rows = sample_rows(initial.shape[0], sample, seed)
    fig = new_figure(6.0, 4.0)
    ax = fig.subplots()
    for name, v in (("initial", initial), ("homogenised", final)):
        ax.hist(max_cosine_to_others(v, rows), bins=40, alpha=0.6, label=name)
    ax.set_xlabel("max cosine to any other code vector")
    ax.set_ylabel("identities")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_code_usage(codes: np.ndarray, vocab: int, displaced_per_level: list[int] | None = None,
                    path: PathLike | None = None) -> Figure:
    """GIF code statistics per level j of the codes ``[N, l]``: how many identities carry each token
    (tokens sorted by use; an even code tree is flat, unused tokens are the tail at 0), with the number of
    tokens used of ``vocab`` and the identities moved by the balanced assignment (collisions) in the legend."""
    codes = np.asarray(codes)
    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    for j in range(codes.shape[1]):
        counts = np.sort(np.bincount(codes[:, j], minlength=vocab))[::-1]
        moved = f", {displaced_per_level[j]} moved" if displaced_per_level is not None else ""
        ax.plot(np.arange(vocab), counts, marker=".", label=f"level {j}: {int((counts > 0).sum())}/{vocab} used{moved}")
    ax.set_xlabel("token (sorted by use)")
    ax.set_ylabel("identities with the token")
    ax.set_title(f"{codes.shape[0]} identity codes, l={codes.shape[1]}, K={vocab}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
