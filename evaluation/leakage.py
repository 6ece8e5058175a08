"""Identity leakage of a synthetic dataset from the real dataset its generator was trained on.

VIGFace §4.1 "Identity leakage" / Appendix I / Fig. 6b: every synthetic image is matched to its most
similar real face (top-1 cosine), and that distribution is compared with the real dataset's own
nearest-negative-class similarity (how close real people are to *other* real people).

Modes:
- ``"image"``: synthetic image -> top-1 over all real images; reference: each real image -> top-1 over
  real images of other classes.
- ``"centre"``: synthetic image -> top-1 over real class centres; reference: each real image -> top-1
  over the centres of the other real classes (queries are images in both, so the two compare).

Decision rule (our choice; the paper only compares the histograms): both sides are reduced per
identity by the max over the identity's images, so like is compared with like. The real level is the
``threshold_quantile`` quantile of the real per-class maxima; a synthetic identity leaks when its max
top-1 exceeds that level. The default quantile is 0.99, not the max: real datasets such as
CASIA-WebFace contain label noise (one person under two labels), whose near-1 similarities would make
the max a level that nothing can exceed. ``threshold_quantile=1.0`` gives the max. Per-identity maxima
grow with images per identity, so compare datasets with similar class sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluation.knn import ArrayLike, nearest_negative, topk_cosine
from evaluation.properties import check_contiguous_labels, class_centres

LEAKAGE_MODES = ("image", "centre")


@dataclass(frozen=True)
class LeakageMatch:
    """One synthetic image and its most similar real image (image mode) or real class (centre mode)."""

    synthetic_index: int
    synthetic_label: int
    real_index: int
    similarity: float


@dataclass
class LeakageReport:
    """Top-1 similarities to the real set, the real nearest-negative reference and the verdict."""

    mode: str
    synth_top1: np.ndarray  # [Ns] top-1 cosine of each synthetic image to the real set
    synth_match: np.ndarray  # [Ns] matched real image index (image mode) or real class id (centre mode)
    identity_labels: np.ndarray  # [Is] distinct synthetic labels, ascending
    identity_max: np.ndarray  # [Is] max top-1 over the identity's images
    identity_argmax: np.ndarray  # [Is] synthetic image index attaining identity_max (first one)
    real_nearest_negative: np.ndarray  # [Nr] nearest-negative similarity of each real image
    real_identity_max: np.ndarray  # [Kr] max of real_nearest_negative per real class
    threshold_quantile: float
    real_level: float
    top_matches: list[LeakageMatch] = field(default_factory=list)

    @property
    def leaking_identities(self) -> np.ndarray:
        """Synthetic labels whose max top-1 similarity exceeds the real level."""
        return self.identity_labels[self.identity_max > self.real_level]

    @property
    def leak_fraction(self) -> float:
        """Fraction of synthetic identities above the real nearest-negative level."""
        return float(np.mean(self.identity_max > self.real_level))

    def passes(self, max_leak_fraction: float = 0.0) -> bool:
        """Gate: at most ``max_leak_fraction`` of synthetic identities above the level (0 = strict)."""
        if not 0.0 <= max_leak_fraction <= 1.0:
            raise ValueError(f"max_leak_fraction must be in [0, 1], got {max_leak_fraction}")
        return self.leak_fraction <= max_leak_fraction

    def summary(self) -> dict[str, float]:
        """Flat dict for logging."""
        return {
            "leak_fraction": self.leak_fraction,
            "num_leaking_identities": float(self.leaking_identities.size),
            "real_level": self.real_level,
            "threshold_quantile": self.threshold_quantile,
            "synth_top1_mean": float(self.synth_top1.mean()),
            "synth_top1_max": float(self.synth_top1.max()),
            "real_nearest_negative_mean": float(self.real_nearest_negative.mean()),
            "real_nearest_negative_max": float(self.real_nearest_negative.max()),
        }


def group_max(values: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group max of ``values`` and the first index attaining it; groups must be 0..num_groups-1."""
    best = np.full(num_groups, -np.inf)
    np.maximum.at(best, groups, values)
    hits = np.flatnonzero(values == best[groups])
    _, first = np.unique(groups[hits], return_index=True)
    return best, hits[first]


def _check_mode(mode: str) -> None:
    if mode not in LEAKAGE_MODES:
        raise ValueError(f"unknown leakage mode {mode!r}; expected one of {LEAKAGE_MODES}")


def real_nearest_negative(
    real_emb: ArrayLike, real_labels: ArrayLike, mode: str = "image", **knn_kwargs
) -> np.ndarray:
    """Nearest-negative-class similarity [Nr] of every real image (the reference distribution).

    Depends only on the real set and the mode: compute once and pass to ``leakage_report`` as
    ``real_reference`` when several synthetic datasets are checked against the same real set.
    """
    _check_mode(mode)
    labels, num_classes = check_contiguous_labels(real_labels, real_emb.shape[0], "real_labels")
    if num_classes < 2:
        raise ValueError("the real dataset needs at least 2 classes for a nearest-negative reference")
    if mode == "image":
        keys, key_labels = real_emb, labels
    else:
        keys = class_centres(real_emb, labels, num_classes, device=knn_kwargs.get("device"))
        key_labels = np.arange(num_classes)
    values, _ = nearest_negative(real_emb, labels, keys, key_labels, **knn_kwargs)
    return values.double().numpy()


def leakage_report(
    synth_emb: ArrayLike,
    synth_labels: ArrayLike,
    real_emb: ArrayLike,
    real_labels: ArrayLike,
    mode: str = "image",
    *,
    threshold_quantile: float = 0.99,
    top_m: int = 16,
    real_reference: np.ndarray | None = None,
    **knn_kwargs,
) -> LeakageReport:
    """Identity-leakage report of a synthetic set against a real set.

    Args:
        synth_emb, synth_labels: [Ns, d] embeddings and [Ns] integer identity labels (any values).
        real_emb, real_labels: [Nr, d] embeddings and [Nr] labels covering 0..Kr-1.
        mode: ``"image"`` or ``"centre"`` (see the module docstring).
        threshold_quantile: quantile of the real per-class nearest-negative maxima used as the level.
        top_m: number of most similar (synthetic, real) pairs kept, one per synthetic identity.
        real_reference: precomputed ``real_nearest_negative(real_emb, real_labels, mode)``.
        knn_kwargs: ``query_chunk``, ``key_chunk``, ``device``, ``dtype`` for ``topk_cosine``.
    """
    _check_mode(mode)
    if not 0.0 < threshold_quantile <= 1.0:
        raise ValueError(f"threshold_quantile must be in (0, 1], got {threshold_quantile}")
    if top_m < 0:
        raise ValueError(f"top_m must be >= 0, got {top_m}")
    n_s = synth_emb.shape[0]
    s_labels = np.asarray(synth_labels)
    if s_labels.shape != (n_s,) or not np.issubdtype(s_labels.dtype, np.integer):
        raise ValueError(f"synth_labels must be integers of shape [{n_s}], got {s_labels.dtype} {s_labels.shape}")
    r_labels, num_real = check_contiguous_labels(real_labels, real_emb.shape[0], "real_labels")
    if real_reference is None:
        real_reference = real_nearest_negative(real_emb, r_labels, mode, **knn_kwargs)
    real_reference = np.asarray(real_reference, dtype=np.float64)
    if real_reference.shape != (real_emb.shape[0],):
        raise ValueError(f"real_reference must have shape [{real_emb.shape[0]}], got {real_reference.shape}")

    keys = real_emb if mode == "image" else class_centres(real_emb, r_labels, num_real, device=knn_kwargs.get("device"))
    top1, match = topk_cosine(synth_emb, keys, 1, **knn_kwargs)
    top1, match = top1[:, 0].double().numpy(), match[:, 0].numpy()

    identity_labels, inverse = np.unique(s_labels, return_inverse=True)
    identity_max, identity_argmax = group_max(top1, inverse, identity_labels.size)
    real_identity_max, _ = group_max(real_reference, r_labels, num_real)
    real_level = float(np.quantile(real_identity_max, threshold_quantile))

    order = np.argsort(-identity_max, kind="stable")[:top_m]
    matches = [
        LeakageMatch(int(identity_argmax[j]), int(identity_labels[j]), int(match[identity_argmax[j]]), float(identity_max[j]))
        for j in order
    ]
    return LeakageReport(
        mode=mode,
        synth_top1=top1,
        synth_match=match,
        identity_labels=identity_labels,
        identity_max=identity_max,
        identity_argmax=identity_argmax,
        real_nearest_negative=real_reference,
        real_identity_max=real_identity_max,
        threshold_quantile=float(threshold_quantile),
        real_level=real_level,
        top_matches=matches,
    )
