"""Our diffusion generators (``generation.generator``) as SynthDistill latent generators: a distillation
that uses no real face at all (the generator's own training data aside).

Latent row = [condition vector (d entries), sampler seed (1 entry, an integer held exactly in float32)].
``z``: the condition part ~ N(0, I) (a random direction = a new, virtual identity), the seed drawn
uniformly in [0, 2^24). ``to_w`` is the identity (the generator has no mapping network; W = Z); the
condition fed to the generator is ``cond_scale * w[:, :d]``. Re-sampling noise is zero on the seed entry:
``w' = w + c s n`` moves the identity condition and keeps the initial diffusion noise.

Per kind (:data:`CONDITIONS`): VIGFace's DiT takes ``prototype`` [B, cond_dim] (normalised inside) and
fixed ``landmarks`` (the ArcFace template at its size); AugGen's EDM2 takes ``class_vector``
[B, num_classes], scaled by ``1/sqrt(num_classes)`` so a latent row has the norm of a one-hot class.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from distill.latent_generator import LatentGenerator, LatentGeneratorError, resize_faces01, seeded_generator
from fr.data.alignment import template_for_size

SEED_RANGE = 2 ** 24  # float32 holds every integer below this exactly


def _dit_conditions(gen) -> tuple[str, int, float, dict]:
    size = gen.image_size
    return "prototype", int(gen.config["cond_dim"]), 1.0, {"landmarks": template_for_size(size)}


def _edm2_conditions(gen) -> tuple[str, int, float, dict]:
    k = int(gen.num_classes)
    return "class_vector", k, 1.0 / math.sqrt(k), {}


# generator kind -> (condition key, its size, scale, fixed other conditions)
CONDITIONS = {"vigface_dit": _dit_conditions, "auggen_edm2": _edm2_conditions}


class DiffusionLatentGenerator(LatentGenerator):
    def __init__(self, generator, device: str | torch.device = "cpu"):
        if generator.kind not in CONDITIONS:
            raise LatentGeneratorError(f"diffusion generator kind {generator.kind!r} has no latent mapping for "
                                       f"SynthDistill; known: {sorted(CONDITIONS)}")
        self.generator, self.device = generator, torch.device(device)
        self.cond_key, self.cond_dim, self.cond_scale, self.fixed = CONDITIONS[generator.kind](generator)
        self.z_dim = self.w_dim = self.cond_dim + 1
        self.name = f"diffusion:{generator.kind}"

    def sample_latents(self, n: int, seed: int) -> torch.Tensor:
        g = seeded_generator(seed)
        cond = torch.randn(n, self.cond_dim, generator=g)
        seeds = torch.randint(0, SEED_RANGE, (n, 1), generator=g).float()
        return torch.cat([cond, seeds], dim=1)

    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def latent_noise(self, latent: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = super().latent_noise(latent, generator)
        n[:, self.cond_dim:] = 0.0  # the sampler seed is not a continuous entry
        return n

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        cond = (w[:, :self.cond_dim].detach().cpu().float() * self.cond_scale).numpy()
        seeds = [int(s) for s in w[:, self.cond_dim].detach().cpu().round().long().tolist()]
        conditions = {self.cond_key: cond, **{k: np.repeat(v[None], len(seeds), 0) for k, v in self.fixed.items()}}
        rgb = self.generator.sample(conditions, seeds)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
        return resize_faces01(x, self.image_size).to(w.device)

    def describe(self) -> dict:
        return {**super().describe(), "diffusion": self.generator.describe()}


def load_diffusion_latents(model_dir: str | Path, device: str = "cpu", **options) -> DiffusionLatentGenerator:
    """A latent generator over the diffusion model saved in ``model_dir`` (``options``: sampling settings)."""
    from generation.generator import load_generator

    return DiffusionLatentGenerator(load_generator(model_dir, device=device, **options), device)
