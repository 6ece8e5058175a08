"""Identity leakage: hand-computed 3-d case, copied vs unrelated synthetic sets, plot output."""
import math

import numpy as np
import pytest

from evaluation.dataset_plots import plot_leakage_distributions
from evaluation.leakage import group_max, leakage_report, real_nearest_negative


def unit(deg, z=0.0):
    r = math.radians(deg)
    return [math.cos(r), math.sin(r), z]


def cosd(deg):
    return math.cos(math.radians(deg))


# real: class 0 at 0 and 10 degrees, class 1 at 90 and 100 degrees (in the xy plane)
REAL = np.array([unit(0), unit(10), unit(90), unit(100)], np.float32)
REAL_LABELS = np.array([0, 0, 1, 1])
# synthetic identity 7 at 45 and 60 degrees (near real faces), identity 3 on the z axis (novel)
SYNTH = np.array([unit(45), [0, 0, 1], unit(60), [0, 0, 2]], np.float32)
SYNTH_LABELS = np.array([7, 3, 7, 3])


def test_hand_computed_image_mode():
    rep = leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS, "image", threshold_quantile=1.0, key_chunk=3)
    # reference: 0->90 (cos 90), 10->90 (cos 80), 90->10 (cos 80), 100->10 (cos 90)
    np.testing.assert_allclose(rep.real_nearest_negative, [0, cosd(80), cosd(80), 0], atol=1e-6)
    np.testing.assert_allclose(rep.real_identity_max, [cosd(80), cosd(80)], atol=1e-6)
    assert rep.real_level == pytest.approx(cosd(80), abs=1e-6)
    # 45 -> 10 (35 deg), 60 -> 90 (30 deg); z-axis images are orthogonal to every real face
    np.testing.assert_allclose(rep.synth_top1, [cosd(35), 0, cosd(30), 0], atol=1e-6)
    assert rep.synth_match[[0, 2]].tolist() == [1, 2]
    assert rep.identity_labels.tolist() == [3, 7]
    np.testing.assert_allclose(rep.identity_max, [0, cosd(30)], atol=1e-6)
    assert rep.identity_argmax.tolist() == [1, 2]
    assert rep.leak_fraction == 0.5 and rep.leaking_identities.tolist() == [7]
    assert not rep.passes() and rep.passes(0.5)
    top = rep.top_matches[0]
    assert (top.synthetic_index, top.synthetic_label, top.real_index) == (2, 7, 2)
    assert top.similarity == pytest.approx(cosd(30), abs=1e-6)
    assert len(rep.top_matches) == 2


def test_hand_computed_centre_mode():
    rep = leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS, "centre", threshold_quantile=1.0, top_m=1)
    # centres at 5 and 95 degrees; real images to the other class centre: 95, 85, 85, 95 degrees
    np.testing.assert_allclose(rep.real_nearest_negative, [cosd(95), cosd(85), cosd(85), cosd(95)], atol=1e-6)
    np.testing.assert_allclose(rep.synth_top1[[0, 2]], [cosd(40), cosd(35)], atol=1e-6)
    assert rep.synth_match[[0, 2]].tolist() == [0, 1]
    assert rep.real_level == pytest.approx(cosd(85), abs=1e-6)
    assert rep.leak_fraction == 0.5 and len(rep.top_matches) == 1


def clustered_real(rng, k=20, per=5, d=64):
    """Real-like embeddings: a shared face direction plus identity and image components."""
    common = rng.normal(size=d)
    common /= np.linalg.norm(common)
    ids = rng.normal(size=(k, d)) / math.sqrt(d)
    labels = np.repeat(np.arange(k), per)
    emb = common + 0.8 * ids[labels] + 0.3 * rng.normal(size=(k * per, d)) / math.sqrt(d)
    return emb.astype(np.float32), labels


@pytest.mark.parametrize("mode", ["image", "centre"])
def test_copies_flagged_unrelated_pass(mode):
    rng = np.random.default_rng(0)
    real, labels = clustered_real(rng)
    ref = real_nearest_negative(real, labels, mode, query_chunk=16, key_chunk=32)
    # copies of real images with small noise, relabelled: every identity is a real person
    copy = real + 0.02 * rng.normal(size=real.shape).astype(np.float32) / 8
    leak = leakage_report(copy, labels + 100, real, labels, mode, real_reference=ref, key_chunk=32)
    assert leak.leak_fraction == 1.0 and not leak.passes(0.5)
    assert min(m.similarity for m in leak.top_matches) > 0.9
    if mode == "image":
        assert all(m.real_index == m.synthetic_index for m in leak.top_matches)
    # unrelated isotropic random embeddings: far from every real face
    rand = rng.normal(size=(60, 64)).astype(np.float32)
    ok = leakage_report(rand, np.repeat(np.arange(12), 5), real, labels, mode, real_reference=ref)
    assert ok.leak_fraction == 0.0 and ok.passes()
    assert ok.synth_top1.max() < ok.real_level
    per_class_max = [ref[labels == c].max() for c in range(labels.max() + 1)]
    assert ok.real_level == pytest.approx(np.quantile(per_class_max, 0.99))
    np.testing.assert_allclose(ok.identity_max, ok.synth_top1.reshape(12, 5).max(1))
    # the precomputed reference equals the one computed inside
    np.testing.assert_allclose(leakage_report(rand, np.zeros(60, int), real, labels, mode).real_nearest_negative, ref)


def test_group_max_first_argmax():
    best, arg = group_max(np.array([0.5, 0.9, 0.9, 0.1, 0.3]), np.array([1, 0, 0, 2, 1]), 3)
    np.testing.assert_array_equal(best, [0.9, 0.5, 0.1])
    np.testing.assert_array_equal(arg, [1, 0, 3])


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS, "pixel")
    with pytest.raises(ValueError, match="threshold_quantile"):
        leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS, threshold_quantile=0.0)
    with pytest.raises(ValueError, match="synth_labels"):
        leakage_report(SYNTH, SYNTH_LABELS[:3], REAL, REAL_LABELS)
    with pytest.raises(ValueError, match="without gaps"):
        leakage_report(SYNTH, SYNTH_LABELS, REAL, np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        real_nearest_negative(REAL, np.zeros(4, int))
    with pytest.raises(ValueError, match="real_reference"):
        leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS, real_reference=np.zeros(3))
    rep = leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS)
    with pytest.raises(ValueError, match="max_leak_fraction"):
        rep.passes(1.5)


def test_leakage_plot_writes_png(tmp_path):
    rep = leakage_report(SYNTH, SYNTH_LABELS, REAL, REAL_LABELS)
    for target in (rep, [("a", rep), ("b", rep)]):
        path = tmp_path / "leak.png"
        plot_leakage_distributions(target, path, bins=10)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
