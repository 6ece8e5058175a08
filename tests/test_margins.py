"""Margins against their formulas computed independently in numpy (float64)."""
import math

import numpy as np
import pytest
import torch

from fr.margins import AdaFace, ArcFace, CosFace, build_margin


def _inputs(seed=0, b=6, c=5):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.95, 0.95, size=(b, c))
    labels = rng.integers(0, c, size=b)
    labels[1] = -1  # target on another shard
    labels[4] = -1
    return cos, labels


def _expected(cos, labels, s, target_fn):
    out = s * cos.copy()
    for i, y in enumerate(labels):
        if y >= 0:
            out[i, y] = s * target_fn(i, cos[i, y])
    return out


def _run(margin, cos, labels, norms=None):
    t = torch.tensor(cos, dtype=torch.float64)
    n = None if norms is None else torch.tensor(norms, dtype=torch.float64)
    return margin(t, torch.tensor(labels, dtype=torch.long), n).numpy()


def test_arcface_matches_formula_and_fallback():
    cos, labels = _inputs()
    cos[0, labels[0]] = -0.99  # theta + m > pi: fallback branch
    m, s = 0.5, 30.0

    def target(_, c):
        theta = np.arccos(c)
        return np.cos(theta + m) if theta + m <= np.pi else c - m * np.sin(m)

    got = _run(ArcFace(scale=s, margin=m), cos, labels)
    np.testing.assert_allclose(got, _expected(cos, labels, s, target), atol=1e-6)
    assert got[1].tolist() == pytest.approx((s * cos[1]).tolist())  # -1 row only scaled


def test_cosface_matches_formula():
    cos, labels = _inputs(1)
    got = _run(CosFace(scale=64.0, margin=0.35), cos, labels)
    np.testing.assert_allclose(got, _expected(cos, labels, 64.0, lambda _, c: c - 0.35), atol=1e-9)


def test_adaface_matches_formula_with_ema_after_two_steps():
    m, h, s, t_alpha, eps = 0.4, 0.333, 64.0, 0.01, 1e-3
    head = AdaFace(scale=s, margin=m, h=h, t_alpha=t_alpha)
    mu, sd = 20.0, 100.0
    rng = np.random.default_rng(3)
    for step in range(2):
        cos, labels = _inputs(10 + step)
        norms = rng.uniform(5, 40, size=cos.shape[0])
        norms[0] = 500.0  # clipped to 100
        norms[2] = 1e-6  # clipped to 0.001
        safe = np.clip(norms, 1e-3, 100.0)
        mu = t_alpha * safe.mean() + (1 - t_alpha) * mu
        sd = t_alpha * safe.std(ddof=1) + (1 - t_alpha) * sd

        def target(i, c):
            n = np.clip(h * (safe[i] - mu) / (sd + eps), -1, 1)
            theta = np.arccos(np.clip(c, -1 + eps, 1 - eps))
            return np.cos(np.clip(theta - m * n, eps, np.pi - eps)) - (m + m * n)

        got = _run(head, cos, labels, norms)
        np.testing.assert_allclose(got, _expected(cos, labels, s, target), atol=1e-6)
        assert float(head.batch_mean) == pytest.approx(mu, rel=1e-6)
        assert float(head.batch_std) == pytest.approx(sd, rel=1e-6)


def test_adaface_nan_norm_rows_are_neutral_and_excluded_from_stats():
    cos, labels = _inputs(5)
    labels[:] = np.arange(len(labels)) % cos.shape[1]
    norms = np.array([10.0, 30.0, 20.0, np.nan, 25.0, np.nan])
    head = AdaFace()
    got = _run(head, cos, labels, norms)
    finite = norms[np.isfinite(norms)]
    assert float(head.batch_mean) == pytest.approx(0.01 * finite.mean() + 0.99 * 20.0)
    i = 3  # n = 0: g_angle 0, g_add m
    assert got[i, labels[i]] == pytest.approx(64.0 * (cos[i, labels[i]] - 0.4), abs=1e-6)
    with pytest.raises(ValueError, match="norms"):
        head(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_gradient_is_finite_at_cosine_one():
    cos = torch.tensor([[1.0, 0.0], [-1.0, 0.2]], requires_grad=True)
    for margin in (ArcFace(), CosFace()):
        margin(cos, torch.tensor([0, 0])).sum().backward()
        assert torch.isfinite(cos.grad).all()
        cos.grad = None


def test_build_margin_and_errors():
    assert isinstance(build_margin("ArcFace", scale=30.0, margin=0.5), ArcFace)
    assert build_margin("adaface").h == pytest.approx(0.333)
    with pytest.raises(ValueError, match="arcface"):
        build_margin("sphereface")
    with pytest.raises(ValueError, match="valid"):
        build_margin("cosface", m=0.3)
    with pytest.raises(ValueError, match="label 7"):
        CosFace()(torch.zeros(2, 3), torch.tensor([0, 7]))
    assert math.isclose(CosFace().scale, 64.0)
