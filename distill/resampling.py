"""SynthDistill's dynamic re-sampling (eqs. 2-3) and the sampling modes of its Table 4."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.latent_generator import LatentGenerator

# static: one fresh-batch step per iteration; static_2x: two fresh-batch steps (as many images as the
# dynamic modes); dynamic_z / dynamic_w: a fresh-batch step, then a step on re-sampled latents (Alg. 1)
MODES = ("static", "static_2x", "dynamic_z", "dynamic_w")


def check_mode(mode: str, where: str = "distill.mode") -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: unknown sampling mode {mode!r}; expected one of {list(MODES)}")
    return mode


def agreement(e_teacher: torch.Tensor, e_student: torch.Tensor) -> torch.Tensor:
    """SIM(e_T, e_S) = 0.5 * (1 + cos(e_T, e_S)) per row, in [0, 1], detached (eq. 2)."""
    return 0.5 * (1.0 + F.cosine_similarity(e_teacher.detach().float(), e_student.detach().float(), dim=1))


def resample(latent: torch.Tensor, s: torch.Tensor, c: float, noise: torch.Tensor) -> torch.Tensor:
    """latent' = latent + c * s * n, one similarity ``s`` per row (eq. 3)."""
    if s.shape != latent.shape[:1] or noise.shape != latent.shape:
        raise ValueError(f"resample: latent {tuple(latent.shape)}, s {tuple(s.shape)}, noise {tuple(noise.shape)} "
                         "do not fit (one s per row, noise shaped like the latent)")
    scale = (c * s.to(latent.dtype)).reshape(-1, *([1] * (latent.ndim - 1)))
    return latent + scale * noise


def resampled_w(gen: LatentGenerator, mode: str, z: torch.Tensor, w: torch.Tensor, s: torch.Tensor, c: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step-2 intermediate latents of a dynamic mode and, for ``dynamic_z``, the re-sampled z.

    ``dynamic_w`` perturbs w (the paper's default: n in W, broadcast to every style input);
    ``dynamic_z`` perturbs z and maps it again.
    """
    if mode == "dynamic_w":
        return resample(w, s, c, gen.latent_noise(w, generator)), None
    if mode == "dynamic_z":
        z2 = resample(z, s, c, gen.latent_noise(z, generator))
        return gen.to_w(z2), z2
    raise ValueError(f"resampled_w: mode {mode!r} does not re-sample (dynamic_z | dynamic_w)")
