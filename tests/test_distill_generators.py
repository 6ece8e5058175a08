"""Diffusion models as SynthDistill latent generators (a tiny random DiT through the generator interface)."""
from __future__ import annotations

import pytest
import torch

from distill.diffusion_latents import DiffusionLatentGenerator, load_diffusion_latents
from distill.latent_generator import LatentGeneratorError, seeded_generator
from distill.resampling import resample


def test_dit_latents_wire_through_the_generator_interface(tmp_path):
    from generation.dit import build_dit, save_dit

    torch.manual_seed(0)
    save_dit(build_dit("tiny", image_size=16, patch_size=8, hidden_size=32, depth=1, num_heads=2, cond_dim=8),
             tmp_path / "dit")
    gen = load_diffusion_latents(tmp_path / "dit", steps=2, guidance=1.5)
    z = gen.sample_latents(3, 0)
    assert z.shape == (3, 9) and torch.equal(z[:, -1], z[:, -1].round())
    w = gen.to_w(z)
    x = gen.synthesize(w)
    assert x.shape == (3, 3, 112, 112) and 0 <= float(x.min()) and float(x.max()) <= 1
    torch.testing.assert_close(gen.synthesize(w[1:2]), x[1:2])
    n = gen.latent_noise(w, seeded_generator(1))
    assert torch.all(n[:, -1] == 0) and torch.all(n[:, :-1] != 0)
    w2 = resample(w, torch.full((3,), 0.5), 1.0, n)
    assert torch.equal(w2[:, -1], w[:, -1])  # the diffusion seed is kept, the prototype moves


def test_unknown_kind_is_a_clear_error():
    class Other:
        kind = "something_else"

    with pytest.raises(LatentGeneratorError, match="something_else.*known"):
        DiffusionLatentGenerator(Other())
