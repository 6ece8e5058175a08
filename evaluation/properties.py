"""Properties of a (synthetic) face dataset: class consistency, separability and intra-class diversity.

VIGFace §4.1 "Property of generated Dataset" and Appendix E/H. The paper's eq. 8 and 9 did not
survive text extraction; the definitions below follow its prose:
- class centre f_k: mean of the class's (L2-normalised) embeddings, re-normalised;
- C_k (eq. 8): mean cosine of the class's images to f_k;
- S_k (eq. 9): mean *distance* of f_k to the other centres. The paper says "distance" and works in
  cosine space throughout, so we take the cosine distance 1 - cos(f_k, f_j);
- D_k (eq. 10-11): variance (1/N) of the min-max normalised FIQA scores within class k.
Fig. 6a reports dataset means divided by the same means on a real reference dataset.

We also count "unique" identities, Vec2Face style: classes whose most similar other centre has cosine
<= ``sep_threshold``. VIGFace gives no threshold; the default 0.3 is a convention, not a paper value.

Every reduction is chunked (index_add / bincount), so 1e6 images and 1e5 classes fit in memory.
Classes with a single image have undefined consistency and diversity (NaN) and are listed in
``DatasetProperties.singleton_classes``; means exclude them. Labels must be 0..K-1 with no gaps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.knn import ArrayLike, normalised_rows, topk_cosine

METRICS = ("consistency", "separability", "diversity", "nearest_distance")


def check_contiguous_labels(labels: ArrayLike, n: int, name: str = "labels") -> tuple[np.ndarray, int]:
    """Validate integer labels of length ``n`` covering 0..K-1 without gaps; returns (int64 labels, K)."""
    arr = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n == 0:
        raise ValueError(f"{name} is empty")
    if arr.min() < 0:
        raise ValueError(f"{name} has negative values (min {arr.min()})")
    k = int(arr.max()) + 1
    missing = np.flatnonzero(np.bincount(arr, minlength=k) == 0)
    if missing.size:
        raise ValueError(
            f"{name} must cover 0..{k - 1} without gaps; {missing.size} empty classes, first: {missing[:10].tolist()}"
        )
    return arr, k


def class_centres(
    embeddings: ArrayLike, labels: np.ndarray, num_classes: int, *, chunk: int = 65536, device=None
) -> np.ndarray:
    """Normalised class centres [K, d] (float32): mean of normalised embeddings per class, re-normalised."""
    n, d = embeddings.shape
    sums = torch.zeros((num_classes, d), dtype=torch.float64, device=device)
    for s in range(0, n, chunk):
        x = normalised_rows(embeddings, s, min(s + chunk, n), device=device).double()
        sums.index_add_(0, torch.as_tensor(labels[s : s + chunk], device=sums.device), x)
    norms = torch.linalg.vector_norm(sums, dim=1)
    degenerate = torch.nonzero(norms < 1e-12).flatten()
    if degenerate.numel():
        raise ValueError(f"class centres of classes {degenerate[:10].tolist()} have zero norm (embeddings cancel)")
    return (sums / norms[:, None]).float().cpu().numpy()


def class_consistency(
    embeddings: ArrayLike, labels: np.ndarray, centres: np.ndarray, *, chunk: int = 65536, device=None
) -> np.ndarray:
    """Per-class consistency [K]; NaN for classes with one image.

    VIGFace eq. 8: C_k = (1/N) * sum_i cos(f_k, x_i) over the N images x_i of class k.
    """
    n = embeddings.shape[0]
    num_classes = centres.shape[0]
    c = torch.as_tensor(centres, device=device)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=c.device)
    for s in range(0, n, chunk):
        x = normalised_rows(embeddings, s, min(s + chunk, n), device=device)
        lab = torch.as_tensor(labels[s : s + chunk], device=c.device)
        sums.index_add_(0, lab, (x * c[lab]).sum(dim=1).double())
    counts = np.bincount(labels, minlength=num_classes)
    out = sums.cpu().numpy() / counts
    out[counts < 2] = np.nan
    return out


def class_separability(centres: np.ndarray) -> np.ndarray:
    """Per-class separability [K] (needs K >= 2).

    VIGFace eq. 9: S_k = 1/(K-1) * sum_{j != k} (1 - cos(f_k, f_j)). With unit centres the sum of
    cosines is f_k . (sum_j f_j) - 1, so no K x K matrix is formed.
    """
    num_classes = centres.shape[0]
    if num_classes < 2:
        raise ValueError(f"separability needs at least 2 classes, got {num_classes}")
    f = centres.astype(np.float64)
    cos_sum = f @ f.sum(axis=0) - np.einsum("kd,kd->k", f, f)
    return 1.0 - cos_sum / (num_classes - 1)


def nearest_other_class(centres: np.ndarray, **knn_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Cosine to, and index of, each centre's most similar other centre (chunked top-1)."""
    v, i = topk_cosine(centres, centres, 1, exclude_self=True, **knn_kwargs)
    return v[:, 0].double().numpy(), i[:, 0].numpy()


def normalise_fiqa(fiqa: ArrayLike, fiqa_range: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max normalise FIQA scores (VIGFace Appendix E) over ``fiqa_range`` or the data's own range.

    Pass a common range (e.g. the union of all compared datasets' ranges) when the diversity of
    several datasets is compared; each dataset's own range makes D_k scale-free per dataset.
    """
    q = np.asarray(fiqa, dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError("fiqa scores contain NaN or inf")
    lo, hi = (q.min(), q.max()) if fiqa_range is None else (float(fiqa_range[0]), float(fiqa_range[1]))
    if fiqa_range is not None and not hi > lo:
        raise ValueError(f"fiqa_range must satisfy low < high, got {fiqa_range}")
    return np.zeros_like(q) if hi == lo else (q - lo) / (hi - lo)


def intra_class_diversity(fiqa_norm: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class diversity [K]; NaN for classes with one image.

    VIGFace eq. 10-11: mean_k = (1/N) sum_i q_i ; D_k = (1/N) sum_i (q_i - mean_k)^2 over class k,
    q_i the normalised FIQA score. Two passes (mean, then squared deviations) for accuracy.
    """
    counts = np.bincount(labels, minlength=num_classes)
    mean = np.bincount(labels, weights=fiqa_norm, minlength=num_classes) / counts
    out = np.bincount(labels, weights=(fiqa_norm - mean[labels]) ** 2, minlength=num_classes) / counts
    out[counts < 2] = np.nan
    return out


@dataclass
class DatasetProperties:
    """Per-class properties of one dataset (arrays of length K) and their dataset means."""

    class_sizes: np.ndarray
    consistency: np.ndarray
    separability: np.ndarray
    diversity: np.ndarray
    nearest_class: np.ndarray
    nearest_class_similarity: np.ndarray
    sep_threshold: float

    @property
    def num_classes(self) -> int:
        return int(self.class_sizes.shape[0])

    @property
    def singleton_classes(self) -> np.ndarray:
        """Classes with one image (consistency and diversity undefined for them)."""
        return np.flatnonzero(self.class_sizes == 1)

    @property
    def nearest_distance(self) -> np.ndarray:
        """1 - cosine to the most similar other centre (low = a near-duplicate identity, Fig. 19)."""
        return 1.0 - self.nearest_class_similarity

    @property
    def num_unique(self) -> int:
        """Classes whose most similar other centre has cosine <= sep_threshold (Vec2Face-style count)."""
        return int(np.sum(self.nearest_class_similarity <= self.sep_threshold))

    def mean(self, metric: str) -> float:
        """Dataset-level value of a metric: mean over classes where it is defined (NaN if none)."""
        values = self.metric(metric)
        valid = values[~np.isnan(values)]
        return float(valid.mean()) if valid.size else float("nan")

    def metric(self, metric: str) -> np.ndarray:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        return getattr(self, metric)

    def summary(self) -> dict[str, float]:
        """Flat dict for logging: the three paper means, unique count/fraction, singleton count."""
        out = {m: self.mean(m) for m in ("consistency", "separability", "diversity")}
        out.update(
            num_classes=float(self.num_classes),
            num_unique=float(self.num_unique),
            unique_fraction=self.num_unique / self.num_classes,
            num_singleton_classes=float(self.singleton_classes.size),
        )
        return out


def compute_properties(
    embeddings: ArrayLike,
    labels: ArrayLike,
    fiqa: ArrayLike | None,
    *,
    sep_threshold: float = 0.3,
    fiqa_range: tuple[float, float] | None = None,
    chunk: int = 65536,
    device=None,
) -> DatasetProperties:
    """Consistency, separability, diversity and nearest-centre figures of one dataset.

    Args:
        embeddings: [N, d] FR embeddings (array, memmap or tensor; normalised here).
        labels: [N] integer class ids covering 0..K-1 (K >= 2).
        fiqa: [N] FIQA scores (e.g. CR-FIQA), or None (diversity is then NaN).
        sep_threshold: cosine threshold for ``num_unique``.
        fiqa_range: min-max range for FIQA normalisation (default: the data's own range).
        chunk: rows per chunk; device: torch device for the chunked work.
    """
    if not isinstance(embeddings, (np.ndarray, torch.Tensor)) or embeddings.ndim != 2:
        raise ValueError(f"embeddings must be an [N, d] array or tensor, got {getattr(embeddings, 'shape', None)}")
    n = embeddings.shape[0]
    labels_np, num_classes = check_contiguous_labels(labels, n)
    if num_classes < 2:
        raise ValueError(f"dataset properties need at least 2 classes, got {num_classes}")
    if fiqa is not None and np.shape(fiqa) != (n,):
        raise ValueError(f"fiqa must have shape [{n}], got {np.shape(fiqa)}")
    centres = class_centres(embeddings, labels_np, num_classes, chunk=chunk, device=device)
    near_sim, near_idx = nearest_other_class(centres, device=device)
    diversity = (
        np.full(num_classes, np.nan)
        if fiqa is None
        else intra_class_diversity(normalise_fiqa(fiqa, fiqa_range), labels_np, num_classes)
    )
    return DatasetProperties(
        class_sizes=np.bincount(labels_np, minlength=num_classes),
        consistency=class_consistency(embeddings, labels_np, centres, chunk=chunk, device=device),
        separability=class_separability(centres),
        diversity=diversity,
        nearest_class=near_idx,
        nearest_class_similarity=near_sim,
        sep_threshold=float(sep_threshold),
    )


def normalise_to_reference(props: DatasetProperties, ref_props: DatasetProperties) -> dict[str, float]:
    """Fig. 6a: each dataset mean divided by the reference (real) dataset's mean."""
    return {
        m: props.mean(m) / ref_props.mean(m) if ref_props.mean(m) != 0 else float("nan")
        for m in ("consistency", "separability", "diversity")
    }


def lowest_fraction(props: DatasetProperties, metric: str, fraction: float = 0.05) -> np.ndarray:
    """Class ids of the lowest ``fraction`` of classes by ``metric`` (Fig. 18-20), lowest first.

    Classes where the metric is undefined (NaN) are skipped; at least one class is returned when any
    is defined. Use ``nearest_distance`` for the most similar identity pairs (Fig. 19).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = props.metric(metric)
    valid = np.flatnonzero(~np.isnan(values))
    if valid.size == 0:
        return valid
    count = max(1, math.ceil(fraction * valid.size))
    order = np.argsort(values[valid], kind="stable")[:count]
    return valid[order]
