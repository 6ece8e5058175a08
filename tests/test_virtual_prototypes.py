"""VIGFace virtual prototypes: count rule, sigma EMA, gradients reach W only."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fr.margins import ArcFace
from fr.virtual_prototypes import (
    SigmaEMA,
    draw_virtual_sample,
    real_embedding_std,
    sample_virtual_embeddings,
    virtual_batch_size,
)


@pytest.mark.parametrize(
    "b_r,n,k,expected",
    [(512, 10000, 10000, 512), (512, 10000, 5000, 256), (10, 4, 1, 3), (3, 4, 1, 1), (1, 1000, 1, 1), (8, 5, 0, 0)],
)
def test_virtual_batch_size(b_r, n, k, expected):
    # k*b_r/n rounded half up (10*1/4 = 2.5 -> 3, 3/4 -> 1), at least 1 when k > 0
    assert virtual_batch_size(b_r, n, k) == expected


def test_virtual_batch_size_rejects_bad_counts():
    with pytest.raises(ValueError, match="n > 0"):
        virtual_batch_size(8, 0, 3)


def _np_sigma(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.sqrt(unit.var(axis=0).mean())


def test_sigma_ema_follows_eq5():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(6, 4)) * (i + 1) + i for i in range(3)]
    ema = SigmaEMA(alpha=0.9)
    expected = None
    for x in batches:
        s = _np_sigma(x)
        expected = s if expected is None else 0.9 * s + 0.1 * expected
        got = ema.update(torch.tensor(x, dtype=torch.float32))
        assert float(got) == pytest.approx(expected, rel=1e-5)
    assert int(ema.steps) == 3


def test_real_std_is_detached():
    x = torch.randn(5, 3, requires_grad=True)
    assert not real_embedding_std(x).requires_grad


def test_sampled_embeddings_match_eq3_and_replay():
    w = torch.randn(7, 4)
    emb, idx = sample_virtual_embeddings(w, 0.25, 5, torch.Generator().manual_seed(3))
    assert len(set(idx.tolist())) == 5  # without replacement when count <= k
    idx2, noise = draw_virtual_sample(7, 5, 4, torch.Generator().manual_seed(3))
    assert torch.equal(idx, idx2)
    torch.testing.assert_close(emb, F.normalize(w[idx], dim=1) + 0.25 * noise)
    _, many = sample_virtual_embeddings(w, 0.25, 20, torch.Generator().manual_seed(3))
    assert many.shape == (20,) and int(many.max()) < 7


def test_virtual_gradients_reach_prototypes_only():
    torch.manual_seed(0)
    n, k, d = 4, 3, 8
    backbone = nn.Sequential(nn.Linear(6, d), nn.ReLU(), nn.Linear(d, d))
    weight = nn.Parameter(torch.randn(n + k, d))
    real = backbone(torch.randn(5, 6))
    ema = SigmaEMA()
    sigma = ema.update(real)
    count = virtual_batch_size(real.shape[0], n, k)
    virt, idx = sample_virtual_embeddings(weight[n:], sigma, count, torch.Generator().manual_seed(0))
    cosine = F.normalize(virt, dim=1) @ F.normalize(weight, dim=1).t()
    loss = F.cross_entropy(ArcFace()(cosine, idx + n), idx + n)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in backbone.parameters())
    assert weight.grad is not None and weight.grad[n:].abs().sum() > 0
