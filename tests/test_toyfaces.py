import dataclasses

import numpy as np
import pytest

from fr.data.alignment import ARCFACE_TEMPLATE, estimate_similarity
from fr.data.images import decode_image, encode_image
from fr.data.toyfaces import (
    ToyFaceConfig,
    ToyIdentity,
    class_sizes,
    iter_toy_records,
    make_verification_pairs,
    render_canvas,
    render_sample,
    sample_identity,
    sample_nuisance,
    toy_identity_seed,
    toy_sample_seed,
)


def _identity(i: int = 0, split: str = "train") -> ToyIdentity:
    return sample_identity(toy_identity_seed(7, i, split))


def test_render_is_deterministic_and_seed_dependent():
    ident = _identity()
    a, lm_a = render_sample(ident, 123)
    b, lm_b = render_sample(_identity(), 123)  # re-sampled identity, same seeds
    assert a.dtype == np.uint8 and a.shape == (112, 112, 3)
    assert a.tobytes() == b.tobytes() and lm_a.tobytes() == lm_b.tobytes()
    c, _ = render_sample(ident, 124)
    d, _ = render_sample(_identity(1), 123)
    assert np.abs(a.astype(int) - c).mean() > 5
    assert np.abs(a.astype(int) - d).mean() > 5
    assert sample_identity(5) == sample_identity(5) and sample_identity(5) != sample_identity(6)


def test_other_output_size():
    img, lm = render_sample(_identity(), 3, size=64)
    assert img.shape == (64, 64, 3)
    assert np.abs(lm - ARCFACE_TEMPLATE * 64 / 112).max() < 12


def test_train_and_verify_seeds_are_disjoint():
    train = {toy_identity_seed(0, i, "train") for i in range(2000)}
    verify = {toy_identity_seed(0, i, "verify") for i in range(2000)}
    assert len(train) == 2000 and len(verify) == 2000
    assert not train & verify
    assert {s % 4 for s in train} == {0} and {s % 4 for s in verify} == {1}
    assert toy_identity_seed(0, 3, "train") != toy_identity_seed(1, 3, "train")
    assert toy_sample_seed(10, 0) != toy_sample_seed(10, 1) != toy_sample_seed(11, 0)
    with pytest.raises(ValueError, match="split"):
        toy_identity_seed(0, 0, "test")
    with pytest.raises(ValueError):
        toy_identity_seed(0, -1, "train")


def test_class_sizes_long_tail():
    n, lo, hi, a = 500, 3, 120, 0.6
    sizes = class_sizes(n, lo, hi, seed=4, exponent=a)
    assert sizes.shape == (n,) and sizes.dtype.kind == "i"
    assert sizes.min() >= lo and sizes.max() == hi
    # independent reference: the rank law computed point by point
    expected = sorted((min(hi, max(lo, round(hi * r**-a))) for r in range(1, n + 1)), reverse=True)
    assert sorted(sizes.tolist(), reverse=True) == expected
    assert np.median(sizes) < 0.6 * sizes.mean()
    assert np.array_equal(sizes, class_sizes(n, lo, hi, seed=4, exponent=a))
    assert not np.array_equal(sizes, class_sizes(n, lo, hi, seed=5, exponent=a))  # permutation follows seed
    assert np.all(class_sizes(10, 7, 7, seed=0) == 7)
    with pytest.raises(ValueError):
        class_sizes(10, 5, 4, seed=0)


@pytest.mark.parametrize("i", range(60))
def test_aligned_landmarks_near_template(i):
    seed = toy_sample_seed(toy_identity_seed(0, i, "train"), 0)
    img, lm = render_sample(_identity(i), seed)
    assert lm.shape == (5, 2) and lm.dtype == np.float32
    assert lm.min() >= 0 and lm.max() < 112
    nz = sample_nuisance(seed)
    tol = 6.0 + 25.0 * (abs(nz.yaw) + abs(nz.pitch))  # identity geometry + off-plane pose
    assert np.abs(lm - ARCFACE_TEMPLATE).max() < tol
    # stored landmarks are the aligned ones: their own best fit to the template is the identity map
    np.testing.assert_allclose(estimate_similarity(lm, ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-3)


@pytest.mark.parametrize("i", range(6))
def test_eye_landmarks_sit_on_pupils_under_pose(i):
    ident = _identity(i)
    nz = dataclasses.replace(
        sample_nuisance(1000 + i), gaze=(0.0, 0.0), eye_open=1.0, glasses=0, headwear=0, bar=False, hand=False
    )
    scene, lm = render_canvas(ident, nz)
    for x, y in lm[:2]:
        pixel = scene[int(round(y)), int(round(x))].astype(int)
        assert np.all(pixel < 40), pixel  # pupil colour (15, 12, 12)


def test_records_have_shard_schema():
    cfg = ToyFaceConfig(num_identities=6, seed=3, min_images=1, max_images=4, jpeg_quality=(90, 90))
    sizes = class_sizes(6, 1, 4, 3, cfg.tail_exponent)
    records = list(iter_toy_records(cfg, [4, 1], split="verify"))
    assert len(records) == sizes[4] + sizes[1]
    first = records[0]
    assert set(first) == {"image", "label", "identity", "landmarks", "source"}
    assert first["label"] == 4 and first["identity"] == "toy_verify_000004" and first["source"] == "real"
    assert first["landmarks"].shape == (10,) and first["landmarks"].dtype == np.float32
    assert decode_image(first["image"]).shape == (112, 112, 3)
    # the record is the JPEG of render_sample's image at the (fixed) configured quality
    id_seed = toy_identity_seed(3, 4, "verify")
    img, lm = render_sample(sample_identity(id_seed), toy_sample_seed(id_seed, 0))
    assert first["image"] == encode_image(img, "jpg", 90)
    np.testing.assert_array_equal(first["landmarks"], lm.reshape(-1))
    # pure function of (config, indices): a sub-range yields the same records
    again = list(iter_toy_records(cfg, range(1, 2), split="verify"))
    assert [r["image"] for r in again] == [r["image"] for r in records[sizes[4]:]]
    with pytest.raises(ValueError, match="outside"):
        next(iter_toy_records(cfg, [6]))


def test_jpeg_quality_range_is_used():
    base = dict(num_identities=2, seed=0, min_images=3, max_images=3)
    low = [r["image"] for r in iter_toy_records(ToyFaceConfig(**base, jpeg_quality=(20, 30)), [0])]
    high = [r["image"] for r in iter_toy_records(ToyFaceConfig(**base, jpeg_quality=(95, 100)), [0])]
    assert all(len(a) < len(b) for a, b in zip(low, high))


def test_config_validation():
    with pytest.raises(ValueError, match="min_images"):
        ToyFaceConfig(min_images=5, max_images=2)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ToyFaceConfig(jpeg_quality=(90, 101))
    with pytest.raises(ValueError, match="num_identities"):
        ToyFaceConfig(num_identities=0)


def test_verification_pairs(monkeypatch):
    cfg = ToyFaceConfig(num_identities=10, seed=2)
    images, issame = make_verification_pairs(cfg, num_identities=12, num_pairs=10, seed=5)
    assert len(images) == 20 and issame.dtype == bool and issame.shape == (10,)
    assert issame.sum() == 5
    decoded = [decode_image(b) for b in images]
    assert all(im.shape == (112, 112, 3) for im in decoded)
    assert all(images[2 * k] != images[2 * k + 1] for k in range(10))
    images2, issame2 = make_verification_pairs(cfg, num_identities=12, num_pairs=10, seed=5)
    assert images2 == images and np.array_equal(issame2, issame)
    images3, _ = make_verification_pairs(cfg, num_identities=12, num_pairs=10, seed=6)
    assert images3 != images
    # held-out identities: every identity rendered comes from the "verify" seed stream
    import fr.data.toyfaces as toyfaces

    seen = []
    monkeypatch.setattr(toyfaces, "sample_identity", lambda s: seen.append(s) or sample_identity(s))
    toyfaces.make_verification_pairs(cfg, num_identities=12, num_pairs=4, seed=5)
    assert sorted(seen) == sorted(toy_identity_seed(2, i, "verify") for i in range(12))
    with pytest.raises(ValueError):
        make_verification_pairs(cfg, num_identities=2, num_pairs=10, seed=0)
