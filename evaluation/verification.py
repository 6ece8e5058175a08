"""1:1 face verification: 10-fold accuracy (insightface protocol), TAR@FAR, ROC, flip-test embeddings.

Pairs are stored as 2N images or embeddings, pair i being rows (2i, 2i+1); `issame[i]` says whether
the pair shows one identity. Similarities are cosines; a pair is predicted "same" when its similarity
is strictly greater than the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch

from fr.face_embedder import images_to_tensor, l2_normalize  # noqa: F401  (re-exported)
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold

EmbedFn = Callable[[torch.Tensor], Union[torch.Tensor, np.ndarray]]
ImageBatch = Union[Sequence[np.ndarray], np.ndarray, torch.Tensor]

DEFAULT_FARS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
PIXEL_MEAN = 127.5
PIXEL_SCALE = 128.0


@dataclass
class VerificationResult:
    """k-fold verification accuracy, optionally with TAR@FAR and the ROC of all pairs."""

    accuracy: float  # mean test accuracy over the folds
    accuracy_std: float  # population std (ddof=0) over the folds, as insightface reports
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray  # similarity threshold chosen on each fold's training part
    num_pairs: int
    tar_at_far: dict[float, float] = field(default_factory=dict)
    fpr: np.ndarray | None = None
    tpr: np.ndarray | None = None
    roc_thresholds: np.ndarray | None = None
    auc: float | None = None

    @property
    def threshold(self) -> float:
        """Mean of the per-fold thresholds (one operating point for the whole benchmark)."""
        return float(np.mean(self.fold_thresholds))

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat scalar metrics for a tracker: accuracy, std, threshold, auc and tar@far=... ."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}accuracy_std": self.accuracy_std,
               f"{prefix}threshold": self.threshold}
        if self.auc is not None:
            out[f"{prefix}auc"] = self.auc
        for far, tar in self.tar_at_far.items():
            out[f"{prefix}tar_at_far_{far:g}"] = tar
        return out


def _check_pairs(similarities: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool]
                 ) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(similarities, dtype=np.float64)
    same = np.asarray(issame)
    if sims.ndim != 1:
        raise ValueError(f"similarities must be 1-D, got shape {sims.shape}")
    if same.shape != sims.shape:
        raise ValueError(f"issame has shape {same.shape} but similarities has shape {sims.shape}")
    if same.dtype != np.bool_:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("issame must be boolean (or 0/1)")
        same = same.astype(bool)
    if not np.isfinite(sims).all():
        raise ValueError("similarities contain NaN or infinite values")
    return sims, same


def _accuracy_at(sims: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of the rule `sim > t` for every t in `thresholds` (counts by binary search)."""
    genuine = np.sort(sims[same])
    impostor = np.sort(sims[~same])
    accepted_genuine = len(genuine) - np.searchsorted(genuine, thresholds, side="right")
    rejected_impostor = np.searchsorted(impostor, thresholds, side="right")
    return (accepted_genuine + rejected_impostor) / len(sims)


def _candidate_thresholds(sims: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive unique similarities plus one value below and above all of
    them: every distinct split of the training pairs, each placed in the middle of its gap."""
    values = np.unique(sims)
    margin = max(float(values[-1] - values[0]), 1.0)
    return np.concatenate(([values[0] - margin], (values[:-1] + values[1:]) / 2, [values[-1] + margin]))


def best_threshold(similarities: np.ndarray, issame: np.ndarray,
                   thresholds: np.ndarray | None = None) -> tuple[float, float]:
    """Threshold maximising the accuracy of `sim > t` on these pairs, and that accuracy.

    Candidates are `thresholds` if given, else every distinct split (see `_candidate_thresholds`).
    Ties go to the smallest threshold (first maximum), so the choice is deterministic.
    """
    sims, same = _check_pairs(similarities, issame)
    grid = _candidate_thresholds(sims) if thresholds is None else np.asarray(thresholds, np.float64)
    acc = _accuracy_at(sims, same, grid)
    best = int(np.argmax(acc))
    return float(grid[best]), float(acc[best])


def kfold_accuracy(similarities: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool],
                   n_folds: int = 10, thresholds: np.ndarray | None = None) -> VerificationResult:
    """insightface-style k-fold verification accuracy.

    Folds are contiguous (`KFold(n_folds, shuffle=False)`); for each fold the threshold is chosen
    on the other folds by `best_threshold` and the accuracy is measured on the held-out fold.
    """
    sims, same = _check_pairs(similarities, issame)
    if n_folds < 2 or len(sims) < n_folds:
        raise ValueError(f"need n_folds >= 2 and at least n_folds pairs, got n_folds={n_folds}, "
                         f"{len(sims)} pairs")
    accs, ths = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(sims):
        t, _ = best_threshold(sims[train], same[train], thresholds)
        accs.append(_accuracy_at(sims[test], same[test], np.array([t]))[0])
        ths.append(t)
    accs_arr = np.asarray(accs)
    return VerificationResult(accuracy=float(accs_arr.mean()), accuracy_std=float(accs_arr.std()),
                              fold_accuracies=accs_arr, fold_thresholds=np.asarray(ths),
                              num_pairs=len(sims))


def _require_both_classes(same: np.ndarray) -> None:
    if same.all() or not same.any():
        raise ValueError("ROC / TAR@FAR need both genuine and impostor pairs")


def roc(similarities: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool]
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """ROC of `sim >= t` over all pairs: (fpr, tpr, thresholds, auc) from sklearn.

    Collinear points are dropped (sklearn's drop_intermediate), which keeps the curve's shape.
    """
    sims, same = _check_pairs(similarities, issame)
    _require_both_classes(same)
    fpr, tpr, thr = roc_curve(same, sims)
    return fpr, tpr, thr, float(sk_auc(fpr, tpr))


def tar_at_far(similarities: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool],
               fars: Sequence[float] = DEFAULT_FARS) -> dict[float, float]:
    """True accept rate at each false accept rate, read off the ROC by linear interpolation.

    At a FAR the ROC reaches exactly, the highest TAR with that FAR; between two reached FARs,
    linear interpolation between the neighbouring ROC points. A FAR below 1/num_impostors (the
    smallest non-zero FAR these pairs can measure) gives NaN: it is not measurable here.
    """
    sims, same = _check_pairs(similarities, issame)
    _require_both_classes(same)
    fpr, tpr, _ = roc_curve(same, sims, drop_intermediate=False)  # fpr, tpr non-decreasing
    min_far = 1.0 / int((~same).sum())
    out: dict[float, float] = {}
    for far in fars:
        if not 0.0 <= far <= 1.0:
            raise ValueError(f"FAR must lie in [0, 1], got {far}")
        if far < min_far:
            out[far] = float("nan")
            continue
        lo = int(np.searchsorted(fpr, far, side="right")) - 1  # last point with fpr <= far
        if fpr[lo] == far or lo == len(fpr) - 1:
            out[far] = float(tpr[lo])
        else:
            w = (far - fpr[lo]) / (fpr[lo + 1] - fpr[lo])
            out[far] = float(tpr[lo] + w * (tpr[lo + 1] - tpr[lo]))
    return out


def pair_similarities(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine similarity of rows (2i, 2i+1) of a [2N, d] embedding matrix -> [N] float64."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().double().numpy()
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise ValueError(f"embeddings must be [2N, d] with pairs (2i, 2i+1), got shape {emb.shape}")
    emb = l2_normalize(emb)
    return np.einsum("nd,nd->n", emb[0::2], emb[1::2])


def _as_float_batch(images: ImageBatch, start: int, stop: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"tensor images must be float [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        return images[start:stop]
    return images_to_tensor(images[start:stop])


@torch.inference_mode()
def embed_images(embed_fn: EmbedFn, images: ImageBatch, batch_size: int = 64,
                 flip: bool = True) -> np.ndarray:
    """Unit-norm embeddings [B, d] (float32) of images, computed in batches.

    `images`: RGB uint8 (list or [B, H, W, 3] array, normalised by `images_to_tensor`) or an
    already normalised float tensor [B, 3, H, W]. `embed_fn` maps a normalised CPU batch to
    [b, d] (it moves data to its own device). With `flip`, the flip test: emb(x) + emb(fliplr x).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, len(images), batch_size):
        x = _as_float_batch(images, start, start + batch_size)
        emb = torch.as_tensor(embed_fn(x)).float()
        if flip:
            emb = emb + torch.as_tensor(embed_fn(torch.flip(x, dims=[3]))).float()
        if emb.ndim != 2 or emb.shape[0] != x.shape[0]:
            raise ValueError(f"embed_fn must return [{x.shape[0]}, d], got {tuple(emb.shape)}")
        out.append(emb.cpu().numpy())
    if not out:
        raise ValueError("no images to embed")
    return l2_normalize(np.concatenate(out)).astype(np.float32)


def flip_embeddings(embed_fn: EmbedFn, images: ImageBatch, batch_size: int = 64) -> np.ndarray:
    """Flip-test embeddings: L2-normalised emb(x) + emb(horizontally flipped x), see `embed_images`."""
    return embed_images(embed_fn, images, batch_size=batch_size, flip=True)


def raw_pixel_embed_fn(x: torch.Tensor) -> torch.Tensor:
    """Raw-pixel 'embedding' (the chance-level floor): flattened pixels minus each image's mean,
    so that the cosine of two images is their pixel correlation."""
    flat = x.reshape(x.shape[0], -1)
    return flat - flat.mean(dim=1, keepdim=True)


def evaluate_similarities(similarities: np.ndarray, issame: np.ndarray | Sequence[bool],
                          n_folds: int = 10, fars: Sequence[float] = DEFAULT_FARS) -> VerificationResult:
    """`kfold_accuracy` plus TAR@FAR and the ROC on the same pairs."""
    result = kfold_accuracy(similarities, issame, n_folds=n_folds)
    result.tar_at_far = tar_at_far(similarities, issame, fars)
    result.fpr, result.tpr, result.roc_thresholds, result.auc = roc(similarities, issame)
    return result


def evaluate_pairs(embed_fn: EmbedFn, images: ImageBatch, issame: np.ndarray | Sequence[bool],
                   batch_size: int = 64, flip: bool = True, n_folds: int = 10,
                   fars: Sequence[float] = DEFAULT_FARS) -> VerificationResult:
    """Verification of a benchmark of 2N images (pairs (2i, 2i+1)) with `embed_fn`."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; expected {2 * len(issame)}")
    emb = embed_images(embed_fn, images, batch_size=batch_size, flip=flip)
    return evaluate_similarities(pair_similarities(emb), issame, n_folds=n_folds, fars=fars)


def raw_pixel_floor(bin_path: Path) -> dict[str, float]:
    """Verification accuracy of raw-pixel cosine on a .bin: the floor a trained FR model must beat."""
    from fr.data.binfile import load_bin
    from fr.data.images import decode_image

    images, issame = load_bin(bin_path)
    result = evaluate_pairs(raw_pixel_embed_fn, [decode_image(b) for b in images], issame, flip=False)
    return {"raw_pixel_accuracy": result.accuracy, "raw_pixel_accuracy_std": result.accuracy_std,
            "raw_pixel_auc": float(result.auc), "verify_pairs": float(len(issame))}
