"""Five-point face alignment: a least-squares similarity onto the ArcFace template, then a warp.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner,
as (x, y) pixel coordinates (image-left first).
"""
from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Destination landmarks (x, y) of the standard ArcFace 112x112 crop."""

TEMPLATE_SIZE = 112
# A fit maps the landmarks' spread onto the template's; outside these bounds the detection is junk.
_MIN_SPREAD = 1e-3  # RMS distance of the points from their centroid, in pixels
_MIN_SCALE, _MAX_SCALE = 1e-3, 1e3


class DegenerateLandmarksError(ValueError):
    """Landmarks that cannot define a similarity transform (bad shape, non-finite, collapsed)."""


def template_for_size(size: int) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop (112 is the reference), float32 (5, 2)."""
    if int(size) != size or size <= 0:
        raise ValueError(f"crop size must be a positive integer, got {size!r}")
    return (ARCFACE_TEMPLATE * np.float32(size / TEMPLATE_SIZE)).astype(np.float32)


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    """Validate and reshape 5 landmarks given as (5, 2) or (10,) into float64 (5, 2)."""
    arr = np.asarray(points)
    if arr.shape not in {(5, 2), (10,)}:
        raise DegenerateLandmarksError(f"{name}: expected 5 landmarks as shape (5, 2) or (10,), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DegenerateLandmarksError(f"{name}: landmarks must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(5, 2)
    if not np.all(np.isfinite(arr)):
        raise DegenerateLandmarksError(f"{name}: landmarks contain NaN or inf: {arr.tolist()}")
    spread = np.sqrt(np.mean(np.sum((arr - arr.mean(axis=0)) ** 2, axis=1)))
    if spread < _MIN_SPREAD:
        raise DegenerateLandmarksError(f"{name}: all landmarks (nearly) coincide (RMS spread {spread:.3g} px)")
    return arr


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src onto dst.

    Returns the (2, 3) float64 matrix M with ``dst ~= src @ M[:, :2].T + M[:, 2]``.
    Closed form of Umeyama (1991). Written out because cv2.estimateAffinePartial2D is a robust
    RANSAC/LMedS estimator (random, and it drops "outliers" among only five points), and the
    exact least-squares fit is what aligned face datasets use (skimage's SimilarityTransform,
    the usual reference, is not a dependency here).
    """
    s = _as_points(src, "src")
    d = _as_points(dst, "dst")
    mu_s, mu_d = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - mu_s, d - mu_d
    cov = dc.T @ sc / len(s)  # 2x2 cross-covariance
    u, sing, vt = np.linalg.svd(cov)
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # forbid reflection
    rot = u @ flip @ vt
    var_s = np.mean(np.sum(sc**2, axis=1))
    scale = float(np.trace(np.diag(sing) @ flip) / var_s)
    if not (_MIN_SCALE <= scale <= _MAX_SCALE):
        raise DegenerateLandmarksError(
            f"similarity fit has scale {scale:.3g}, outside [{_MIN_SCALE}, {_MAX_SCALE}]: landmarks are degenerate"
        )
    mat = np.empty((2, 3), dtype=np.float64)
    mat[:, :2] = scale * rot
    mat[:, 2] = mu_d - scale * rot @ mu_s
    return mat


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points; float32 (N, 2)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Warp an RGB uint8 face so its 5 landmarks land on the ArcFace template of a size x size crop.

    Bilinear interpolation; pixels from outside the source are black (constant 0 border),
    as in insightface's ``norm_crop``, so toy and ingested crops look like public aligned sets.
    Returns (aligned RGB uint8 (size, size, 3), landmarks in the crop, float32 (5, 2)).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"align_face: expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    src = _as_points(landmarks, "landmarks")
    mat = estimate_similarity(src, template_for_size(size))
    aligned = cv2.warpAffine(
        img, mat, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )
    return aligned, transform_points(mat, src)
