"""Dataset figures: leakage histograms (VIGFace Fig. 6b), property bars (Fig. 6a), prototype
similarity matrix and histogram (Fig. 3), t-SNE of prototypes and images (Fig. 1).

Built on ``evaluation.plots`` (Agg canvas, no pyplot state): each function returns the figure and
writes a PNG when given a path. Large inputs are subsampled with a fixed seed so plotting stays fast.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from evaluation.leakage import LeakageReport
from evaluation.plots import PathLike, new_figure, save_figure

PROPERTY_NAMES = ("consistency", "separability", "diversity")


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, d] with N > 0, got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"{name} has zero-norm or non-finite rows")
    return x / norms


def _subsample(n: int, max_n: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= max_n else np.sort(rng.choice(n, size=max_n, replace=False))


def plot_leakage_distributions(
    report: LeakageReport | Sequence[tuple[str, LeakageReport]], path: PathLike | None = None, bins: int = 100
) -> Figure:
    """Fig. 6b: synthetic top-1 similarity to real faces vs the real nearest-negative similarity.

    ``report`` is one report or (name, report) pairs sharing a real reference; the real level of the
    first report is drawn as a dashed line.
    """
    reports = [("synthetic", report)] if isinstance(report, LeakageReport) else list(report)
    if not reports:
        raise ValueError("no leakage report to plot")
    first = reports[0][1]
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    ax.hist(first.real_nearest_negative, bins=bins, density=True, alpha=0.5, color="gray",
            label="real: nearest negative class")
    for name, rep in reports:
        ax.hist(rep.synth_top1, bins=bins, density=True, histtype="step", linewidth=1.5,
                label=f"{name}: top-1 to real")
    ax.axvline(first.real_level, color="k", linestyle="--",
               label=f"real level (q={first.threshold_quantile:g})")
    ax.set_xlabel(f"cosine similarity ({first.mode} mode)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_property_bars(normalised: Mapping[str, Mapping[str, float]], path: PathLike | None = None) -> Figure:
    """Fig. 6a: per-dataset property means divided by the reference's (dict name -> {property: ratio})."""
    if not normalised:
        raise ValueError("no datasets to plot")
    names = list(normalised)
    width = 0.8 / len(names)
    x = np.arange(len(PROPERTY_NAMES))
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    for j, name in enumerate(names):
        missing = [p for p in PROPERTY_NAMES if p not in normalised[name]]
        if missing:
            raise ValueError(f"dataset {name!r} lacks properties {missing}")
        ax.bar(x + (j - (len(names) - 1) / 2) * width, [normalised[name][p] for p in PROPERTY_NAMES],
               width, label=name)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="reference")
    ax.set_xticks(x, PROPERTY_NAMES)
    ax.set_ylabel("mean / reference mean")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_prototype_similarity(
    prototypes: np.ndarray, num_real: int, path: PathLike | None = None, max_per_group: int = 1000, seed: int = 0
) -> Figure:
    """Fig. 3: cosine matrix of prototypes (real first, then virtual) and pairwise-cosine histograms.

    Each group is subsampled to ``max_per_group`` rows; histograms show real-real, virtual-virtual
    and real-virtual pairs (off-diagonal).
    """
    w = _unit_rows(prototypes, "prototypes")
    if not 0 <= num_real <= w.shape[0]:
        raise ValueError(f"num_real must be in [0, {w.shape[0]}], got {num_real}")
    rng = np.random.default_rng(seed)
    real = w[:num_real][_subsample(num_real, max_per_group, rng)]
    virt = w[num_real:][_subsample(w.shape[0] - num_real, max_per_group, rng)]
    both = np.concatenate([real, virt])
    sim = both @ both.T
    fig = new_figure(11, 4.5)
    ax_m, ax_h = fig.subplots(1, 2)
    im = ax_m.imshow(sim, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    if len(real) and len(virt):
        ax_m.axhline(len(real) - 0.5, color="w", linewidth=0.8)
        ax_m.axvline(len(real) - 0.5, color="w", linewidth=0.8)
    ax_m.set_title(f"prototype cosine ({len(real)} real | {len(virt)} virtual)")
    fig.colorbar(im, ax=ax_m, fraction=0.046)
    groups = {
        "real-real": real @ real.T,
        "virtual-virtual": virt @ virt.T,
        "real-virtual": real @ virt.T,
    }
    for name, m in groups.items():
        vals = m[np.triu_indices(m.shape[0], 1)] if name != "real-virtual" else m.ravel()
        if vals.size:
            ax_h.hist(vals, bins=100, range=(-1, 1), density=True, histtype="step", label=name)
    ax_h.set_xlabel("cosine similarity")
    ax_h.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tsne(
    prototypes: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: PathLike | None = None,
    is_virtual: np.ndarray | None = None,
    max_points: int = 2000,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> Figure:
    """Fig. 1: joint t-SNE of class prototypes (stars) and image embeddings (dots), coloured by class.

    ``labels[i]`` is the prototype row of image i; ``is_virtual`` [P] marks virtual prototypes
    (outlined stars). Images are subsampled to ``max_points``.
    """
    from sklearn.manifold import TSNE

    protos = _unit_rows(prototypes, "prototypes")
    emb = _unit_rows(embeddings, "embeddings")
    labels = np.asarray(labels)
    if labels.shape != (emb.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape [{emb.shape[0]}], got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= protos.shape[0]:
        raise ValueError(f"labels must index the {protos.shape[0]} prototypes")
    if emb.shape[1] != protos.shape[1]:
        raise ValueError(f"prototypes have dimension {protos.shape[1]} but embeddings {emb.shape[1]}")
    virtual = np.zeros(protos.shape[0], bool) if is_virtual is None else np.asarray(is_virtual, bool)
    if virtual.shape != (protos.shape[0],):
        raise ValueError(f"is_virtual must have shape [{protos.shape[0]}], got {virtual.shape}")
    keep = _subsample(emb.shape[0], max_points, np.random.default_rng(seed))
    points = np.concatenate([protos, emb[keep]])
    perplexity = min(perplexity, max(1.0, (points.shape[0] - 1) / 3))
    # exact gradients for small inputs: as fast there, and no OpenMP start-up cost on busy machines
    method = "exact" if points.shape[0] <= 500 else "barnes_hut"
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=max_iter, method=method,
              random_state=seed).fit_transform(points)
    p_xy, e_xy = xy[: protos.shape[0]], xy[protos.shape[0]:]
    cmap = colormaps["tab20"]
    fig = new_figure(6, 6)
    ax = fig.add_subplot()
    ax.scatter(e_xy[:, 0], e_xy[:, 1], s=6, c=[cmap(c % 20) for c in labels[keep]], alpha=0.6)
    colours = [cmap(c % 20) for c in range(protos.shape[0])]
    # real prototypes: filled stars with a black edge; virtual: white stars with a class-coloured edge
    for mask, virt, name in ((~virtual, False, "real prototype"), (virtual, True, "virtual prototype")):
        if mask.any():
            cols = [colours[i] for i in np.flatnonzero(mask)]
            ax.scatter(p_xy[mask, 0], p_xy[mask, 1], marker="*", s=220, zorder=3, linewidths=1.5, label=name,
                       edgecolors=cols if virt else "k", facecolors="white" if virt else cols)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def sample_grid(train_dir: Path, out_png: Path, identities: int = 8, per_identity: int = 8) -> Path:
    """A grid of the first ``per_identity`` images of ``identities`` classes spread over the dataset."""
    from evaluation.plots import image_grid
    from fr.data.images import decode_image
    from fr.data.shards import list_shards, read_table

    by_label: dict[int, list[np.ndarray]] = {}
    for path in list_shards(train_dir):
        table = read_table(path, columns=["image", "label"])
        for img, lab in zip(table.column("image").to_pylist(), table.column("label").to_pylist()):
            if len(by_label.setdefault(lab, [])) < per_identity:
                by_label[lab].append(decode_image(img))
    labels = sorted(by_label)
    chosen = [labels[i] for i in np.linspace(0, len(labels) - 1, min(identities, len(labels))).astype(int)]
    tiles = []
    for lab in chosen:
        tiles.extend(by_label[lab] + [np.zeros_like(by_label[lab][0])] * (per_identity - len(by_label[lab])))
    image_grid(tiles, per_identity, out_png)
    return out_png
