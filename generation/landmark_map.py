"""Five-point landmark images: the pose condition ``y`` of the VIGFace diffusion model (VIGFace §3.2).

Representation (our choice; the paper only says "five facial landmark image"): one Gaussian heatmap
channel per point, in the order left eye, right eye, nose, left mouth corner, right mouth corner.
Separate channels keep left and right apart, so a horizontally mirrored pose is a different
condition. ``channels=1`` gives a single map (the pixelwise maximum of the five heatmaps).
Values lie in [0, 1]; a pixel (row i, column j) has its centre at (x, y) = (j, i), the convention of
``cv2.warpAffine`` used by the alignment, so a landmark at integer (x, y) peaks at exactly 1 there.
"""
from __future__ import annotations

import numpy as np
import torch

NUM_LANDMARKS = 5


def render_landmark_map(
    landmarks: torch.Tensor | np.ndarray,
    size: int = 112,
    sigma: float = 3.0,
    channels: int = NUM_LANDMARKS,
) -> torch.Tensor:
    """Render landmarks (5, 2) or (B, 5, 2) of (x, y) pixel coordinates as a float32 map [B, C, size, size].

    ``C`` is 5 (one Gaussian of std ``sigma`` pixels per point) or 1 (their maximum). A shard's
    10 floats ``(x0, y0, ..., x4, y4)`` are ``reshape(5, 2)`` of this input.
    """
    pts = torch.as_tensor(landmarks)
    if pts.ndim == 2:
        pts = pts.unsqueeze(0)
    if pts.ndim != 3 or pts.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(
            f"render_landmark_map: landmarks must have shape (5, 2) or (B, 5, 2), got {tuple(torch.as_tensor(landmarks).shape)}"
        )
    if channels not in (1, NUM_LANDMARKS):
        raise ValueError(f"render_landmark_map: channels must be 1 or 5, got {channels}")
    if size < 1 or not sigma > 0:
        raise ValueError(f"render_landmark_map: need size >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    pts = pts.to(torch.float32)
    if not torch.isfinite(pts).all():
        raise ValueError("render_landmark_map: landmarks contain NaN or inf")
    grid = torch.arange(size, dtype=torch.float32, device=pts.device)
    # Separable Gaussian: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    gx = torch.exp(-((grid - pts[..., 0:1]) ** 2) / (2 * sigma**2))  # [B, 5, W]
    gy = torch.exp(-((grid - pts[..., 1:2]) ** 2) / (2 * sigma**2))  # [B, 5, H]
    maps = gy.unsqueeze(-1) * gx.unsqueeze(-2)  # [B, 5, H, W]
    if channels == 1:
        maps = maps.amax(dim=1, keepdim=True)
    return maps
