"""EDM2's magnitude-preserving (MP) primitives, written from the equations (Karras et al. 2024, "Analyzing
and Improving the Training Dynamics of Diffusion Models"; DESIGN.md "EDM2").

Every op keeps unit expected magnitude (mean square ~1) for unit-magnitude inputs, so activations and
weights neither grow nor shrink through the network. ``tests/test_edm2_layers.py`` checks this on random
inputs. No library offers these layers (diffusers' EDM schedulers have no EDM2 network), hence our own.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SILU_GAIN = 0.596  # E[silu(x)^2]^(1/2) for x ~ N(0, 1)


def normalize(x: torch.Tensor, dim: int | list[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``x / (eps + ||x|| sqrt(dim_numel / numel))``: unit mean square over ``dim`` (default: all but dim 0)."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """``silu(x) / 0.596``: unit magnitude for unit-normal input."""
    return F.silu(x) / SILU_GAIN


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """``lerp(a, b, t) / sqrt((1 - t)^2 + t^2)``: a weighted sum of two independent unit signals, unit again."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along ``dim`` with balance ``t`` (b's share) that keeps the overall unit magnitude."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=dim)


class MPFourier(nn.Module):
    """Random Fourier features of a scalar: ``sqrt(2) cos(2 pi (f x + p))``, f ~ N(0, 1), p ~ U(0, 1) (buffers)."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel=()``: a linear layer).

    The weight is used as ``normalize(w) * gain / sqrt(fan_in)``; in training mode the stored weight is
    also overwritten by ``normalize(w)`` before use (EDM2's forced weight normalisation), so its norm
    cannot drift under Adam and no weight decay is needed.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = ()):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced weight normalisation
        w = normalize(w)
        w = w * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``keep``, ``down`` (2x2 box filter, stride 2) or ``up`` (nearest, x2): EDM2's [1, 1] filter pair."""
    if mode == "keep":
        return x
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    raise ValueError(f"resample mode must be keep|down|up, got {mode!r}")


def pixel_norm_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Self-attention over pixels with queries/keys/values pixel-normalised per head (EDM2's cosine attention).

    ``qkv``: [B, 3C, H, W] -> [B, C, H, W]. Uses ``torch.nn.functional.scaled_dot_product_attention``.
    """
    b, c3, h, w = qkv.shape
    c = c3 // 3
    y = qkv.reshape(b, num_heads, c // num_heads, 3, h * w)
    q, k, v = normalize(y, dim=2).unbind(3)  # each [B, heads, ch, HW], unit per pixel and head
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, c, h, w)
