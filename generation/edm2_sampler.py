"""The EDM Heun sampler (Karras et al. 2022, Algorithm 1 without churn) with optional classifier-free
guidance, and per-row seeded initial noise.

diffusers 0.42 offers ``EDMEulerScheduler`` (first order only) and ``EDMDPMSolverMultistepScheduler``, but
no EDM Heun, so this is a short own loop (the deterministic sampler EDM/EDM2 evaluate with).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # D(x, sigma) -> x0 estimate


def validate_edm_sampling(steps: int, guidance: float, sigma_min: float, sigma_max: float, rho: float) -> None:
    if steps < 1:
        raise ValueError(f"EDM sampler: steps must be >= 1, got {steps}")
    if guidance < 0:
        raise ValueError(f"EDM sampler: guidance must be >= 0, got {guidance}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"EDM sampler: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if rho <= 0:
        raise ValueError(f"EDM sampler: rho must be > 0, got {rho}")


def sigma_steps(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: ``t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho``, i < N, then t_N = 0."""
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit normal noise ``[B, *shape]``, row i drawn from its own ``torch.Generator`` seeded with ``seeds[i]``."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s) % (2 ** 63))) for s in seeds]
    return torch.stack(rows).to(device)


@torch.no_grad()
def heun_sample(denoise: Denoise, noise: torch.Tensor, steps: int = 32, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM's deterministic 2nd-order sampler from ``x_0 = noise * t_0``: Euler step then the Heun
    (trapezoidal) correction on every step but the last (the one that ends at sigma = 0)."""
    t_steps = sigma_steps(steps, sigma_min, sigma_max, rho)
    x = noise.to(torch.float64) * t_steps[0]
    for i in range(steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        d_cur = (x - denoise(x, t_cur).to(torch.float64)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if i < steps - 1:
            d_next = (x_next - denoise(x_next, t_next).to(torch.float64)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x


def guided_denoiser(model: torch.nn.Module, class_vector: torch.Tensor, guidance: float = 1.0,
                    amp_dtype: torch.dtype | None = None) -> Denoise:
    """``D(x, s) = D_u + w (D_c - D_u)`` with the zero class vector as the unconditional branch
    (what label dropout trained); ``w = 1`` is the plain conditional model (one forward per step)."""
    uncond = torch.zeros_like(class_vector)

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        xs = x.to(torch.float32)
        s = sigma.to(torch.float32).reshape(1).expand(x.shape[0])
        with torch.autocast(xs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if guidance == 1.0:
                return model(xs, s, class_vector).float()
            both = model(torch.cat([xs, xs]), torch.cat([s, s]), torch.cat([class_vector, uncond])).float()
        d_c, d_u = both.chunk(2)
        return d_u + guidance * (d_c - d_u)

    return run


def sample_edm2(model: torch.nn.Module, class_vector: torch.Tensor, seeds: Sequence[int], steps: int = 32,
                guidance: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Faces (RGB uint8 ``[B, S, S, 3]``) of an :class:`~generation.edm2_unet.EDM2Denoiser` for class vectors
    ``[B, num_classes]`` on the model's device, row i from the noise of ``seeds[i]``."""
    cfg = model.config
    device = class_vector.device
    noise = seeded_noise(seeds, (cfg.image_channels, cfg.image_size, cfg.image_size), device)
    was_training = model.training
    model.eval()
    try:
        x = heun_sample(guided_denoiser(model, class_vector, guidance, amp_dtype), noise, steps, sigma_min,
                        sigma_max, rho)
    finally:
        model.train(was_training)
    return to_uint8(x)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model images in [-1, 1] ``[B, 3, S, S]`` -> RGB uint8 ``[B, S, S, 3]``."""
    y = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``[B, S, S, 3]`` -> float ``[B, 3, S, S]`` in [-1, 1] (the EDM2 pixel-space convention)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1
