"""The toy latent generator: new people, a continuous latent, determinism."""
from __future__ import annotations

import numpy as np
import torch

from distill.toy_generator import LATENT_DIM, ToyLatentGenerator, face_params
from fr.data import toyfaces as tf


def _standardised(vectors: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (vectors - ref.mean(0)) / (ref.std(0) + 1e-9)


def test_generated_people_are_not_dataset_identities():
    gen = ToyLatentGenerator()
    generated = np.stack([ident.vector() for ident, _ in gen.params(gen.to_w(gen.sample_latents(200, 5)))])
    dataset = np.stack([tf.sample_identity(tf.toy_identity_seed(0, i, split)).vector()
                        for split, n in (("train", 300), ("verify", 200)) for i in range(n)])
    assert generated.shape[1] == dataset.shape[1]
    g, d = _standardised(generated, dataset), _standardised(dataset, dataset)
    to_dataset = np.sqrt(((g[:, None] - d[None]) ** 2).sum(-1)).min(1)
    within = np.sqrt(((d[:, None] - d[None]) ** 2).sum(-1))
    np.fill_diagonal(within, np.inf)
    # no generated face is a dataset identity: its nearest one is as far as dataset identities are from each other
    assert to_dataset.min() > 0.5 * np.median(within.min(1))
    # and the generated parameters follow the renderer's distribution (same per-parameter ranges and means)
    assert np.all(np.abs(g.mean(0)) < 0.35)
    assert all(ident.seed == -1 for ident, _ in gen.params(torch.zeros(2, LATENT_DIM)))


def test_small_latent_moves_give_similar_faces():
    gen = ToyLatentGenerator(jpeg=False, render_size=56)
    w = gen.to_w(gen.sample_latents(12, 1))
    base = gen.synthesize(w)
    near = gen.synthesize(w + 0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(2)))
    other = gen.synthesize(gen.to_w(gen.sample_latents(12, 3)))
    d_near = (base - near).abs().mean((1, 2, 3))
    d_other = (base - other).abs().mean((1, 2, 3))
    assert d_near.median() < 0.3 * d_other.median()
    # identity parameters move continuously too
    i0 = np.stack([i.vector() for i, _ in gen.params(w)])
    i1 = np.stack([i.vector() for i, _ in gen.params(w + 0.01)])
    assert np.abs(i1 - i0).max() < 0.05 * np.abs(i0).max()


def test_deterministic_and_in_range():
    gen = ToyLatentGenerator(render_size=48)
    z = gen.sample_latents(3, 11)
    torch.testing.assert_close(z, gen.sample_latents(3, 11))
    x = gen.synthesize(gen.to_w(z))
    assert x.shape == (3, 3, 112, 112) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(x, gen.synthesize(gen.to_w(z)))
    # row i depends on its own latent only
    torch.testing.assert_close(gen.synthesize(gen.to_w(z[1:2]))[0], x[1])


def test_discrete_choices_come_from_continuous_entries():
    rng = np.random.default_rng(0)
    glasses = {face_params(rng.standard_normal(LATENT_DIM))[1].glasses for _ in range(300)}
    assert glasses == {0, 1, 2}
    marks = [len(face_params(rng.standard_normal(LATENT_DIM))[0].marks) for _ in range(200)]
    assert min(marks) == 0 and max(marks) >= 8  # plain skin and freckle fields both occur
