"""Generic figures for runs: ROC curves, similarity histograms, image grids, bar charts.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot global state), so they
are safe in worker processes; each function returns the figure and writes a PNG when given a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fr.data.images import encode_image

PathLike = str | Path
DPI = 100


def new_figure(width_in: float = 6.0, height_in: float = 4.5) -> Figure:
    """A figure on an Agg canvas; saved PNGs are exactly (width_in*DPI, height_in*DPI) pixels."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike | None) -> Figure:
    """Write `fig` as PNG to `path` (parent folders created) when a path is given; return it."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI)
    return fig


def plot_roc(results: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: PathLike | None = None,
             title: str = "ROC", log_fpr: bool = True) -> Figure:
    """ROC curves, one per name: `results[name] = (fpr, tpr, auc)`; FPR on a log axis by default."""
    if not results:
        raise ValueError("plot_roc needs at least one curve")
    fig = new_figure()
    ax = fig.add_subplot()
    smallest = 1.0
    for name, (fpr, tpr, area) in results.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        if fpr.shape != tpr.shape:
            raise ValueError(f"ROC {name!r}: fpr {fpr.shape} and tpr {tpr.shape} differ in shape")
        ax.plot(fpr, tpr, label=f"{name} (AUC {area:.4f})")
        if (fpr > 0).any():
            smallest = min(smallest, float(fpr[fpr > 0].min()))
    if log_fpr:
        ax.set_xscale("log")
        ax.set_xlim(smallest, 1.0)
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title=title, ylim=(0.0, 1.01))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_similarity_histogram(similarities: np.ndarray, issame: np.ndarray, path: PathLike | None = None,
                              title: str = "", bins: int = 50) -> Figure:
    """Overlaid normalised histograms of genuine and impostor pair similarities."""
    sims, same = np.asarray(similarities, dtype=np.float64), np.asarray(issame, dtype=bool)
    if sims.shape != same.shape or sims.ndim != 1:
        raise ValueError(f"similarities {sims.shape} and issame {same.shape} must be equal 1-D shapes")
    fig = new_figure()
    ax = fig.add_subplot()
    edges = np.histogram_bin_edges(sims, bins=bins)
    for mask, label in ((same, "genuine"), (~same, "impostor")):
        if mask.any():
            ax.hist(sims[mask], bins=edges, density=True, alpha=0.5, label=f"{label} ({mask.sum()})")
    ax.set(xlabel="cosine similarity", ylabel="density", title=title)
    ax.legend()
    return save_figure(fig, path)


def plot_bars(values: Mapping[str, float], reference: Mapping[str, float] | None = None,
              path: PathLike | None = None, title: str = "", value_label: str = "value") -> Figure:
    """Bar chart of named values, with an optional reference bar beside each (e.g. paper numbers)."""
    if not values:
        raise ValueError("plot_bars needs at least one value")
    names = list(values)
    x = np.arange(len(names))
    width = 0.4 if reference else 0.8
    fig = new_figure(max(4.0, 0.8 * len(names) + 2.0), 4.5)
    ax = fig.add_subplot()
    ax.bar(x - (width / 2 if reference else 0.0), [values[n] for n in names], width, label="measured")
    if reference:
        ref = [reference.get(n, np.nan) for n in names]
        ax.bar(x + width / 2, ref, width, label="reference")
        ax.legend()
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel=value_label, title=title)
    fig.tight_layout()
    return save_figure(fig, path)


def image_grid(images: Sequence[np.ndarray], nrow: int, path: PathLike | None = None,
               labels: Sequence[str] | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile equally sized RGB uint8 images into one RGB uint8 image and optionally write it as PNG.

    `nrow` is the number of images per row (as in torchvision's make_grid); tiles are separated
    and framed by `pad` pixels of `pad_value`. Image k sits at row k // nrow, column k % nrow,
    top-left corner (pad + row*(h+pad), pad + col*(w+pad)). `labels` are drawn on the tiles.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if nrow < 1 or pad < 0:
        raise ValueError(f"need nrow >= 1 and pad >= 0, got nrow={nrow}, pad={pad}")
    h, w = images[0].shape[:2]
    for k, img in enumerate(images):
        if img.dtype != np.uint8 or img.shape != (h, w, 3):
            raise ValueError(f"image {k}: expected RGB uint8 ({h}, {w}, 3), got {img.dtype} {img.shape}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    cols = min(nrow, len(images))
    rows = -(-len(images) // nrow)
    grid = np.full((pad + rows * (h + pad), pad + cols * (w + pad), 3), pad_value, np.uint8)
    for k, img in enumerate(images):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        tile = grid[top:top + h, left:left + w]
        tile[:] = img
        if labels is not None:
            _draw_label(tile, str(labels[k]))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(encode_image(grid, fmt="png"))
    return grid


def _draw_label(tile: np.ndarray, text: str) -> None:
    """Small white text with a black outline in the tile's top-left corner (in place)."""
    scale = max(tile.shape[1] / 300.0, 0.3)
    org = (2, int(12 * scale / 0.4))
    cv2.putText(tile, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
