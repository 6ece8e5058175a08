"""Minority-collapse measure (evaluation.minority_collapse) on synthetic centroids and embeddings."""
from __future__ import annotations

import numpy as np

from evaluation.embed import Embeddings
from evaluation.minority_collapse import (centroid_collapse, class_size_bins, collapse_metrics,
                                          verification_by_size)
from evaluation.minority_collapse_plots import plot_collapse, plot_spread_before_after
from fr.gif.code_vectors import unit_rows


def _collapsed(seed=0):
    """40 classes: the 20 smallest share one direction (collapsed), the 20 largest are spread."""
    rng = np.random.default_rng(seed)
    counts = np.r_[np.full(20, 3), np.full(20, 30)]
    shared = rng.standard_normal(16)
    centroids = np.r_[shared + 0.2 * rng.standard_normal((20, 16)), rng.standard_normal((20, 16))]
    return unit_rows(centroids, "c"), counts


def test_bins_tail_first():
    assert class_size_bins(np.array([1, 2, 3, 4, 100, 100]), 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert class_size_bins(np.full(5, 7), 3).tolist() == [0] * 5  # ties stay together, in the lowest bin
    assert class_size_bins(np.array([8, 8, 8, 8, 8, 8, 9, 20, 40]), 4).tolist() == [0] * 6 + [2, 3, 3]


def test_collapse_detected_in_tail():
    centroids, counts = _collapsed()
    bins = centroid_collapse(centroids, counts, 2)
    assert [b["classes"] for b in bins] == [20, 20] and bins[0]["size_max"] == 3
    m = collapse_metrics(bins, [])
    assert m["collapse/tail_minus_head/mean_max_cos"] > 0.3
    assert m["collapse/tail_minus_head/within_cos"] > 0.5
    spread = centroid_collapse(unit_rows(np.random.default_rng(1).standard_normal((40, 16)), "r"), counts, 2)
    assert abs(collapse_metrics(spread, [])["collapse/tail_minus_head/within_cos"]) < 0.1


def test_verification_by_size_and_plots(tmp_path):
    centroids, counts = _collapsed()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), counts)
    emb = Embeddings(unit_rows(centroids[labels] + 0.1 * rng.standard_normal((len(labels), 16)), "e"), labels)
    ver = verification_by_size(emb, counts, 2, pairs_per_bin=400)
    assert len(ver) == 2 and ver[0]["threshold"] == ver[1]["threshold"]
    assert ver[1]["accuracy"] > ver[0]["accuracy"]  # the collapsed tail is harder to verify
    report = {"bins": centroid_collapse(centroids, counts, 2), "verification": ver}
    plot_collapse({"softmax": report, "gif": report}, tmp_path / "c.png")
    plot_spread_before_after(centroids, unit_rows(rng.standard_normal((40, 16)), "r"), tmp_path / "s.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "s.png").stat().st_size > 1000
