import math

import numpy as np
import pytest

from fr.augment import (
    INTERPOLATIONS,
    AugmentConfig,
    FaceAugment,
    color_jitter,
    rescale,
    sample_erase_box,
    sample_jitter,
)

OFF = dict(flip_prob=0.0, erase_prob=0.0, rescale_prob=0.0, jitter_prob=0.0)


def _face(seed=0, size=112, low=1):
    return np.random.default_rng(seed).integers(low, 256, (size, size, 3), dtype=np.uint8)


def test_all_off_is_identity_and_flip_is_fliplr():
    img = _face()
    rng = np.random.default_rng(0)
    off = FaceAugment(AugmentConfig(**OFF))
    for _ in range(5):
        np.testing.assert_array_equal(off(img, rng), img)
    np.testing.assert_array_equal(FaceAugment(AugmentConfig(enabled=False))(img, rng), img)
    flip = FaceAugment(AugmentConfig(**{**OFF, "flip_prob": 1.0}))
    np.testing.assert_array_equal(flip(img, rng), np.fliplr(img))


@pytest.mark.parametrize("mode", ["width", "area"])
def test_erase_box_is_exact_zero_rectangle_in_range(mode):
    img = _face(1)  # no zero pixels, so every zero comes from erasing
    cfg = AugmentConfig(**{**OFF, "erase_prob": 1.0, "erase_scale_of": mode})
    aug, rng = FaceAugment(cfg), np.random.default_rng(1)
    h, w = img.shape[:2]
    lo, hi = cfg.erase_scale
    # side of the equal-area square: s*W ("width") or sqrt(s*H*W) ("area"); +-1 px for rounding
    side_lo, side_hi = (lo * w, hi * w) if mode == "width" else (math.sqrt(lo * h * w), math.sqrt(hi * h * w))
    for _ in range(200):
        out = aug(img, rng)
        zero = (out == 0).all(axis=2)
        ys, xs = np.nonzero(zero)
        assert len(ys) > 0
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert zero[y0:y1, x0:x1].all() and zero.sum() == (y1 - y0) * (x1 - x0)  # one full rectangle
        assert (out[~zero] == img[~zero]).all()
        assert side_lo - 1 <= math.sqrt(zero.sum()) <= side_hi + 1
        slack = (0.5 * 3.3 + 0.5) / (x1 - x0)  # both sides rounded by <= 0.5 px
        assert 0.3 - slack <= (y1 - y0) / (x1 - x0) <= 3.3 + slack


def test_erase_gives_up_when_nothing_fits():
    cfg = AugmentConfig(erase_scale=(0.9, 1.0), erase_scale_of="area", erase_ratio=(3.0, 3.3))
    assert sample_erase_box(np.random.default_rng(0), 20, 20, cfg) is None  # height would exceed 20


def test_rescale_changes_pixels_not_shape():
    img = _face(2, size=32)
    for name, interp in INTERPOLATIONS.items():
        out = rescale(img, 0.25, interp, interp)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - img).mean() > 10, name  # noise does not survive 4x shrink
    np.testing.assert_array_equal(rescale(img, 1.0, INTERPOLATIONS["linear"], INTERPOLATIONS["linear"]), img)
    aug = FaceAugment(AugmentConfig(**{**OFF, "rescale_prob": 1.0, "rescale_range": (0.3, 0.3)}))
    out = aug(img, np.random.default_rng(0))
    assert out.shape == img.shape and not np.array_equal(out, img)


def test_color_jitter_matches_hand_formulas():
    img = _face(3, size=8, low=0)
    x = img.astype(np.float64)
    # torchvision computes in float32 and truncates to uint8: allow 1 for rounding of e.g. 190 * 1.3
    ref_bri = np.clip(x * 1.3, 0, 255).astype(np.uint8)
    assert np.abs(color_jitter(img, [("brightness", 1.3)]).astype(int) - ref_bri).max() <= 1
    gray = np.floor(x @ np.array([0.2989, 0.587, 0.114]))
    ref_sat = np.clip(0.6 * x + 0.4 * gray[..., None], 0, 255).astype(np.uint8)
    assert np.abs(color_jitter(img, [("saturation", 0.6)]).astype(int) - ref_sat).max() <= 1
    ref_con = np.clip(1.4 * x - 0.4 * gray.mean(), 0, 255).astype(np.uint8)
    assert np.abs(color_jitter(img, [("contrast", 1.4)]).astype(int) - ref_con).max() <= 1


def test_sample_jitter_ranges_and_order():
    cfg = AugmentConfig()
    rng = np.random.default_rng(4)
    orders = set()
    for _ in range(50):
        ops = sample_jitter(rng, cfg)
        assert sorted(n for n, _ in ops) == ["brightness", "contrast", "saturation"]
        assert all(0.5 <= f <= 1.5 for _, f in ops)
        orders.add(tuple(n for n, _ in ops))
    assert len(orders) > 1
    assert [n for n, _ in sample_jitter(rng, AugmentConfig(contrast=0.0, saturation=0.0))] == ["brightness"]


def test_determinism_given_generator():
    img = _face(5)
    aug = FaceAugment(AugmentConfig(flip_prob=0.5, erase_prob=1.0, rescale_prob=1.0, jitter_prob=1.0))
    a = [aug(img, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], aug(img, np.random.default_rng(8)))
    default = FaceAugment()
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(20):
        np.testing.assert_array_equal(default(img, rng1), default(img, rng2))


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="erase_prob"):
        AugmentConfig(erase_prob=1.5)
    with pytest.raises(ValueError, match="interpolations"):
        AugmentConfig(interpolations=("bogus",))
    with pytest.raises(ValueError, match="rescale_range"):
        AugmentConfig(rescale_range=[0.5, 0.2])
    assert AugmentConfig(erase_ratio=[0.5, 2.0]).erase_ratio == (0.5, 2.0)
    with pytest.raises(ValueError, match="uint8"):
        FaceAugment()(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        FaceAugment()(np.zeros((4, 4, 3), np.uint8), 0)
