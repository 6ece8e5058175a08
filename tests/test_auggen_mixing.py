"""AugGen's mixed conditions and the m_s / m_d / m_total metric against hand-made embeddings."""
import numpy as np
import pytest

from evaluation.mixing_metric import best_point, class_centres, m_d, m_s, m_total, plot_mixing_heatmaps
from generation.mixing import MixingError, check_weights, mixed_class_vectors, mixed_rows, sample_pairs


def test_pairs_are_distinct_seeded_and_checked():
    p = sample_pairs(10, 20, seed=3)
    assert p.shape == (20, 2) and np.all(p[:, 0] != p[:, 1])
    assert len({tuple(sorted(r)) for r in p.tolist()}) == 20
    assert np.array_equal(p, sample_pairs(10, 20, seed=3)) and not np.array_equal(p, sample_pairs(10, 20, seed=4))
    with pytest.raises(MixingError, match="at most 45"):
        sample_pairs(10, 46, seed=0)
    sub = sample_pairs(100, 3, 0, classes=np.array([3, 9, 40]))
    assert set(sub.ravel()) <= {3, 9, 40}


def test_mixed_vectors_are_alpha_ci_plus_beta_cj():
    pairs = np.array([[0, 3], [2, 1]])
    c = mixed_class_vectors(pairs, 0.7, 0.4, 5)
    expected = np.zeros((2, 5), np.float32)
    expected[0, 0], expected[0, 3], expected[1, 2], expected[1, 1] = 0.7, 0.4, 0.7, 0.4
    np.testing.assert_allclose(c, expected)
    rows = mixed_rows(pairs, 0.7, 0.4, 5, 3, seed=1)
    assert rows["class_vector"].shape == (6, 5) and rows["pair"].tolist() == [0, 0, 0, 1, 1, 1]
    assert len(set(rows["seed"].tolist())) == 6
    np.testing.assert_array_equal(rows["seed"], mixed_rows(pairs, 0.1, 0.2, 5, 3, seed=1)["seed"])  # seeds: rows only
    with pytest.raises(MixingError, match="distinct"):
        mixed_class_vectors(np.array([[1, 1]]), 0.5, 0.5, 3)
    with pytest.raises(MixingError, match=r"\[0, 3\)"):
        mixed_class_vectors(np.array([[0, 3]]), 0.5, 0.5, 3)
    with pytest.raises(MixingError, match="beta=1.5"):
        check_weights(0.5, 1.5, 0.0, 1.1)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_metric_rewards_consistent_samples_far_from_both_sources():
    rng = np.random.default_rng(0)
    d = 64
    mu_i, mu_j, new = _unit(rng.normal(size=(3, d)))
    # consistent, new identity: samples tightly around `new`
    tight_new = _unit(new + 0.03 * rng.normal(size=(1, 8, d)))
    # inconsistent: random directions
    scattered = _unit(rng.normal(size=(1, 8, d)))
    # collapsed onto source i
    onto_i = _unit(mu_i + 0.03 * rng.normal(size=(1, 8, d)))
    ci, cj = mu_i[None], mu_j[None]
    assert m_s(tight_new)[0] > 0.9 and abs(m_s(scattered)[0]) < 0.1
    assert m_d(tight_new, ci, cj)[0] > 0.8 and m_d(onto_i, ci, cj)[0] < 0.05
    scores = {name: m_total(e, ci, cj)["m_total"] for name, e in
              {"tight_new": tight_new, "scattered": scattered, "onto_i": onto_i}.items()}
    assert max(scores, key=scores.get) == "tight_new"
    # exact values on a hand case: two orthogonal samples -> m_s = 0; their mean bisects them
    e = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])
    assert m_s(e)[0] == pytest.approx(0.0)
    assert m_d(e, np.array([[1.0, 0, 0]]), np.array([[0, 0, 1.0]]))[0] == pytest.approx(1 - 1 / np.sqrt(2))
    centres = class_centres(np.array([[2.0, 0], [0, 1.0], [1.0, 0]]), np.array([0, 1, 0]), [1, 0])
    np.testing.assert_allclose(centres, [[0, 1], [1, 0]])


def test_best_point_and_heatmap(tmp_path):
    results = [{"alpha": a, "beta": b, "m_s": a, "m_d": 1 - abs(a - b), "m_total": a + 1 - abs(a - b)}
               for a in (0.3, 0.7) for b in (0.3, 0.7)]
    best = best_point(results)
    assert (best["alpha"], best["beta"]) == (0.7, 0.7)
    plot_mixing_heatmaps(results, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
