"""Dataset properties (VIGFace eq. 8-11) against hand-computed values and per-class loops; plots."""
import math

import numpy as np
import pytest
import torch

from evaluation.dataset_plots import plot_property_bars, plot_prototype_similarity, plot_tsne
from evaluation.properties import compute_properties, lowest_fraction, normalise_to_reference

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def unit(deg):
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


def hand_case():
    # class 0: 0 and 60 degrees (one scaled by 2); class 1: 90, 90, 180 degrees; class 2: one image
    emb = np.array([unit(0), [2 * c for c in unit(60)], unit(90), unit(90), unit(180), unit(270)], np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2])
    fiqa = np.array([1.0, 3.0, 0.0, 2.0, 4.0, 5.0])
    return emb, labels, fiqa


def test_hand_computed_small_case():
    emb, labels, fiqa = hand_case()
    p = compute_properties(emb, labels, fiqa, sep_threshold=0.5)
    # centres: 30 deg; (-1/3, 2/3)/|.|; 270 deg
    np.testing.assert_allclose(p.consistency[:2], [math.cos(math.radians(30)), math.sqrt(5) / 3], atol=1e-6)
    assert np.isnan(p.consistency[2]) and p.singleton_classes.tolist() == [2]
    # FIQA min-max over [0, 5]: class 0 -> (0.2, 0.6) var 0.04; class 1 -> (0, .4, .8) var 0.32/3
    np.testing.assert_allclose(p.diversity[:2], [0.04, 0.32 / 3], atol=1e-12)
    assert np.isnan(p.diversity[2])
    f = np.array([unit(30), np.array([-1, 2]) / math.sqrt(5), unit(270)])
    cos = f @ f.T
    sep = [(2 - cos[k].sum() + 1) / 2 for k in range(3)]  # mean of 1 - cos over the two others
    np.testing.assert_allclose(p.separability, sep, atol=1e-6)
    # nearest other centre: 0<->1 (cos 2/sqrt5*sin30... computed), 2 -> 0
    off = cos - 2 * np.eye(3)
    np.testing.assert_array_equal(p.nearest_class, off.argmax(1))
    np.testing.assert_allclose(p.nearest_class_similarity, off.max(1), atol=1e-6)
    assert p.num_unique == int(np.sum(off.max(1) <= 0.5))
    assert p.summary()["num_singleton_classes"] == 1
    np.testing.assert_allclose(p.mean("consistency"), np.nanmean(p.consistency))


def brute_properties(emb, labels, fiqa):
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    k = labels.max() + 1
    centres = []
    cons, div = [], []
    q = (fiqa - fiqa.min()) / (fiqa.max() - fiqa.min())
    for c in range(k):
        xc = x[labels == c]
        f = xc.mean(0) / np.linalg.norm(xc.mean(0))
        centres.append(f)
        cons.append(np.mean(xc @ f) if len(xc) > 1 else np.nan)
        div.append(np.var(q[labels == c]) if len(xc) > 1 else np.nan)
    f = np.array(centres)
    cos = f @ f.T
    sep = np.array([np.mean(1 - np.delete(cos[c], c)) for c in range(k)])
    np.fill_diagonal(cos, -np.inf)
    return np.array(cons), sep, np.array(div), cos.max(1), cos.argmax(1)


def random_dataset(seed=0, k=40, d=16):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=k)
    labels = rng.permutation(np.repeat(np.arange(k), sizes))
    centres = rng.normal(size=(k, d))
    emb = (centres[labels] + 0.7 * rng.normal(size=(labels.size, d))).astype(np.float32)
    return emb, labels, rng.uniform(10, 90, size=labels.size)


@pytest.mark.parametrize("chunk", [7, 1000])
def test_matches_per_class_loops(chunk):
    emb, labels, fiqa = random_dataset()
    p = compute_properties(torch.from_numpy(emb), labels, fiqa, chunk=chunk)
    cons, sep, div, near_sim, near_idx = brute_properties(emb.astype(np.float64), labels, fiqa)
    np.testing.assert_allclose(p.consistency, cons, atol=1e-5)
    np.testing.assert_allclose(p.separability, sep, atol=1e-5)
    np.testing.assert_allclose(p.diversity, div, atol=1e-10)
    np.testing.assert_allclose(p.nearest_class_similarity, near_sim, atol=1e-5)
    np.testing.assert_array_equal(p.nearest_class, near_idx)
    np.testing.assert_array_equal(p.class_sizes, np.bincount(labels))
    assert p.num_unique == np.sum(near_sim <= 0.3)


def test_lowest_fraction_and_reference_ratio():
    emb, labels, fiqa = random_dataset()
    p = compute_properties(emb, labels, fiqa)
    valid = np.flatnonzero(p.class_sizes > 1)
    low = lowest_fraction(p, "consistency", 0.05)
    assert len(low) == math.ceil(0.05 * valid.size)
    assert set(low) == set(valid[np.argsort(p.consistency[valid])[: len(low)]])
    low_sep = lowest_fraction(p, "nearest_distance", 0.1)
    assert np.all(p.nearest_class_similarity[low_sep] >= np.delete(p.nearest_class_similarity, low_sep).max())
    assert lowest_fraction(p, "separability", 1.0).size == p.num_classes
    ref = compute_properties(*random_dataset(seed=1))
    ratios = normalise_to_reference(p, ref)
    for m in ("consistency", "separability", "diversity"):
        assert ratios[m] == pytest.approx(np.nanmean(p.metric(m)) / np.nanmean(ref.metric(m)))
    assert normalise_to_reference(p, p) == pytest.approx({"consistency": 1, "separability": 1, "diversity": 1})
    with pytest.raises(ValueError, match="unknown metric"):
        lowest_fraction(p, "quality")


def test_fiqa_range_and_missing_fiqa():
    emb, labels, fiqa = hand_case()
    p = compute_properties(emb, labels, fiqa, fiqa_range=(0.0, 10.0))
    np.testing.assert_allclose(p.diversity[:2], [0.01, 0.08 / 3], atol=1e-12)
    p = compute_properties(emb, labels, None)
    assert np.all(np.isnan(p.diversity)) and math.isnan(p.mean("diversity"))


def test_bad_inputs():
    emb, labels, fiqa = hand_case()
    with pytest.raises(ValueError, match="without gaps"):
        compute_properties(emb, np.array([0, 0, 1, 1, 3, 3]), fiqa)
    with pytest.raises(ValueError, match="negative"):
        compute_properties(emb, labels - 1, fiqa)
    with pytest.raises(ValueError, match="integers"):
        compute_properties(emb, labels.astype(float), fiqa)
    with pytest.raises(ValueError, match="at least 2 classes"):
        compute_properties(emb, np.zeros(6, dtype=int), fiqa)
    with pytest.raises(ValueError, match="fiqa"):
        compute_properties(emb, labels, fiqa[:5])
    with pytest.raises(ValueError, match="fiqa_range"):
        compute_properties(emb, labels, fiqa, fiqa_range=(1.0, 1.0))
    bad = emb.copy()
    bad[3] = 0
    with pytest.raises(ValueError, match="zero-norm"):
        compute_properties(bad, labels, fiqa)
    with pytest.raises(ValueError, match="zero norm"):  # class 0 centre cancels out
        compute_properties(np.array([[1, 0], [-1, 0], [0, 1]], np.float32), np.array([0, 0, 1]), None)


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(8, 16))
    labels = np.repeat(np.arange(8), 5)
    emb = protos[labels] + 0.3 * rng.normal(size=(40, 16))
    plot_property_bars({"a": {"consistency": 1.1, "separability": 0.9, "diversity": 1.0},
                        "b": {"consistency": 0.8, "separability": 1.0, "diversity": 1.3}}, tmp_path / "bars.png")
    plot_prototype_similarity(protos, 3, tmp_path / "sim.png", max_per_group=4)
    plot_tsne(protos, emb, labels, tmp_path / "sub" / "tsne.png", is_virtual=np.arange(8) >= 3, max_points=30,
              max_iter=250)
    for name in ("bars.png", "sim.png", "sub/tsne.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="lacks"):
        plot_property_bars({"a": {"consistency": 1.0}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="index"):
        plot_tsne(protos, emb, labels + 1, tmp_path / "x.png")
