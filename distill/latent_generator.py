"""Generators with a latent space (SynthDistill): one interface for the toy renderer, StyleGAN2 and our
diffusion models.

A latent generator draws ``z ~ N(0, I)`` (:meth:`sample_latents`), maps it to its intermediate space
(:meth:`to_w`; StyleGAN's mapping network M) and renders aligned faces from ``w`` (:meth:`synthesize`;
StyleGAN's synthesis network G). Re-sampling (SynthDistill eq. 3) perturbs ``w`` or ``z`` with
:meth:`latent_noise`, which a generator whose latent holds non-continuous entries (a diffusion seed)
overrides to leave those entries alone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

FACE_SIZE = 112  # the aligned face side every teacher and student of SynthDistill takes


class LatentGeneratorError(ValueError):
    """A latent generator's weights, config or latents do not fit."""


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch RNG seeded with ``seed`` (the latent stream is a function of the seed only)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class LatentGenerator(ABC):
    """``z_dim``/``w_dim``: sizes of the Z and W latents; ``image_size`` the side of ``synthesize``'s output."""

    name: str = "latent_generator"
    z_dim: int
    w_dim: int
    image_size: int = FACE_SIZE

    def sample_latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` latents ``z ~ N(0, I)`` [n, z_dim] (float32, CPU), a function of ``seed`` only."""
        return torch.randn(n, self.z_dim, generator=seeded_generator(seed))

    @abstractmethod
    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        """The intermediate latents ``w = M(z)`` [B, w_dim]."""

    @abstractmethod
    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        """Aligned RGB faces ``G(w)``: float32 [B, 3, image_size, image_size] in [0, 1]; row i a function of w[i]."""

    def latent_noise(self, latent: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``n ~ N(0, I)`` shaped like ``latent`` (Z or W) for re-sampling; zero where a latent entry is not
        continuous."""
        return torch.randn(latent.shape, generator=generator).to(latent.device, latent.dtype)

    def describe(self) -> dict:
        return {"generator": self.name, "z_dim": self.z_dim, "w_dim": self.w_dim, "image_size": self.image_size}


def resize_faces01(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float faces [B, 3, H, W] resized to ``size`` bilinearly (no antialias, as the authors' code)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
