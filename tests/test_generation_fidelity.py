"""Identity fidelity of generated faces: own vs other prototype cosines and top-1 identification."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.generation_fidelity import FidelityInputError, embed_uint8, prototype_fidelity
from fr.data.images import to_model_input


def unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def brute_force(emb, rows, protos):
    """Per-image (own, other mean, other max, hit) with plain Python loops."""
    out = []
    for e, r in zip(emb.tolist(), rows.tolist()):
        e = np.asarray(e) / np.linalg.norm(e)
        cos = [float(e @ (np.asarray(p) / np.linalg.norm(p))) for p in protos.tolist()]
        others = [c for j, c in enumerate(cos) if j != r]
        out.append((cos[r], sum(others) / len(others), max(others), float(cos[r] > max(others))))
    return np.asarray(out)


def test_embedding_equal_to_prototype_gives_own_cos_one_and_rate_one():
    protos = unit_rows(10, 16, 0)
    rows = np.array([0, 3, 7, 8, 9, 9])  # num_real 6: rows 0, 3 real; 7, 8, 9, 9 virtual
    s = prototype_fidelity(protos[rows] * 3.0, rows, protos, num_real=6)  # scale must not matter
    for kind, n in (("real", 2), ("virtual", 4), ("all", 6)):
        assert s[kind]["count"] == n
        assert s[kind]["own_cos"] == pytest.approx(1.0, abs=1e-6)
        assert s[kind]["top1"] == 1.0
    assert s["all"]["chance_top1"] == pytest.approx(0.1)


def test_matches_brute_force_per_kind():
    protos, emb = unit_rows(7, 5, 1), torch.randn(40, 5, generator=torch.Generator().manual_seed(2))
    rows = np.random.default_rng(3).integers(0, 7, 40)
    ref = brute_force(emb, rows, protos)
    s = prototype_fidelity(emb, rows, protos, num_real=4)
    for kind, m in (("real", rows < 4), ("virtual", rows >= 4)):
        got = [s[kind][k] for k in ("own_cos", "other_cos", "other_max_cos", "top1")]
        np.testing.assert_allclose(got, ref[m].mean(axis=0), atol=1e-5)
        assert s[kind]["count"] == int(m.sum())


def test_random_embeddings_identify_at_chance():
    protos = unit_rows(20, 64, 4)
    n = 4000
    rows = np.random.default_rng(5).integers(0, 20, n)
    s = prototype_fidelity(torch.randn(n, 64, generator=torch.Generator().manual_seed(6)), rows, protos, 10)
    assert abs(s["all"]["top1"] - 1 / 20) < 0.02  # binomial sd ~0.0035
    assert abs(s["all"]["own_cos"]) < 0.02 and abs(s["all"]["other_cos"]) < 0.02


def test_near_other_prototype_is_a_miss_and_empty_kind_is_nan():
    protos = unit_rows(5, 8, 7)
    emb = protos[[1, 2]] + 0.01 * protos[[0, 0]]  # images of row 0 that look like rows 1 and 2
    s = prototype_fidelity(emb, np.array([0, 0]), protos, num_real=5)
    assert s["real"]["top1"] == 0.0 and s["real"]["other_max_cos"] > 0.99
    assert s["virtual"]["count"] == 0 and np.isnan(s["virtual"]["own_cos"])


@pytest.mark.parametrize("bad", [
    dict(rows=np.array([0, 5])),  # row out of range
    dict(rows=np.array([0])),  # wrong length
    dict(emb=torch.zeros(2, 3)),  # wrong width
    dict(num_real=6),
])
def test_bad_input_raises(bad):
    protos = unit_rows(5, 4, 8)
    args = dict(emb=torch.ones(2, 4), rows=np.array([0, 1]), num_real=3) | bad
    with pytest.raises(FidelityInputError):
        prototype_fidelity(args["emb"], args["rows"], protos, args["num_real"])


class MeanColour(torch.nn.Module):
    """A 'backbone' whose embedding is the per-channel mean of its input (plus a constant)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 0.0, 0.0, 1.0]))

    def forward(self, x):
        assert not self.training
        return torch.cat([x.mean(dim=(2, 3)), torch.zeros(len(x), 1)], dim=1) + self.bias


def test_embed_uint8_uses_fr_normalisation_and_batches():
    rng = np.random.default_rng(9)
    faces = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    model = MeanColour().train()
    got = embed_uint8(model, faces, batch_size=2)
    x = to_model_input(faces)
    ref = F.normalize(torch.cat([x.mean(dim=(2, 3)), torch.ones(5, 1)], dim=1), dim=1)
    torch.testing.assert_close(got, ref)
    assert model.training  # mode restored
    with pytest.raises(FidelityInputError):
        embed_uint8(model, faces.astype(np.float32))
