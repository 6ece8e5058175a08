import math

import numpy as np
import pytest
import torch

from evaluation.verification import (
    best_threshold,
    embed_images,
    evaluate_pairs,
    flip_embeddings,
    images_to_tensor,
    kfold_accuracy,
    pair_similarities,
    raw_pixel_embed_fn,
    roc,
    tar_at_far,
)


def test_kfold_perfectly_separable_is_one():
    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.5
    sims = np.where(same, rng.uniform(0.5, 0.9, 200), rng.uniform(-0.3, 0.2, 200))
    res = kfold_accuracy(sims, same)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert len(res.fold_accuracies) == 10
    assert np.all((res.fold_thresholds > 0.2) & (res.fold_thresholds < 0.5))


def test_kfold_two_folds_hand_computed():
    # fold A: trained on A the unique best split is (0.2, 0.4) -> t = 0.3; fold B: (0.45, 0.5) -> 0.475
    sims_a = [0.9, 0.4, 0.85, 0.2, 0.8, 0.1]
    same_a = [1, 1, 0, 0, 1, 0]
    sims_b = [0.7, 0.5, 0.45, 0.3, 0.75, 0.05]
    same_b = [1, 1, 0, 0, 0, 1]
    res = kfold_accuracy(sims_a + sims_b, same_a + same_b, n_folds=2)
    # test on A with t=0.475: 0.9 ok, 0.4 miss, 0.85 false accept, 0.2 ok, 0.8 ok, 0.1 ok -> 4/6
    # test on B with t=0.3: 0.7 ok, 0.5 ok, 0.45 false accept, 0.3 ok, 0.75 false accept, 0.05 miss -> 3/6
    np.testing.assert_allclose(res.fold_thresholds, [0.475, 0.3])
    np.testing.assert_allclose(res.fold_accuracies, [4 / 6, 3 / 6])
    assert res.accuracy == pytest.approx(7 / 12)
    assert res.accuracy_std == pytest.approx(1 / 12)


def test_best_threshold_user_grid_first_maximum():
    sims = np.array([0.1, 0.2, 0.8, 0.9])
    same = np.array([0, 0, 1, 1], bool)
    t, acc = best_threshold(sims, same, thresholds=np.array([-1.0, 0.15, 0.25, 0.5, 0.85]))
    assert acc == 1.0 and t == 0.25  # 0.25 and 0.5 are both perfect; the first one wins
    t, acc = best_threshold(sims, same, thresholds=np.array([0.85, 0.15]))
    assert acc == 0.75 and t == 0.85  # tie at 3/4: first in grid order


def _brute_tar(sims, same, far):
    """Operating points of `sim >= t` for every t, then the interpolated ROC read at `far`."""
    n_gen, n_imp = same.sum(), (~same).sum()
    pts = [(0.0, 0.0)] + [(((sims >= t) & ~same).sum() / n_imp, ((sims >= t) & same).sum() / n_gen)
                          for t in sorted(set(sims.tolist()), reverse=True)]
    if far < 1 / n_imp:
        return math.nan
    at = [tp for fp, tp in pts if fp == far]
    if at:
        return max(at)
    lo_fp = max(fp for fp, _ in pts if fp < far)
    hi_fp = min(fp for fp, _ in pts if fp > far)
    lo_tp = max(tp for fp, tp in pts if fp == lo_fp)
    hi_tp = min(tp for fp, tp in pts if fp == hi_fp)
    return lo_tp + (far - lo_fp) / (hi_fp - lo_fp) * (hi_tp - lo_tp)


def test_tar_at_far_hand_example():
    # ROC points of sim >= t: (0,1/3) (1/4,1/3) (1/4,2/3) (1/2,1) (3/4,1) (1,1); the tie at 0.2 makes
    # the diagonal segment (1/4,2/3)-(1/2,1)
    sims = np.array([0.9, 0.8, 0.2, 0.85, 0.2, 0.1, 0.05])
    same = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    out = tar_at_far(sims, same, fars=(0.2, 0.25, 0.375, 0.5, 0.9))
    assert math.isnan(out[0.2])  # below 1/4 (4 impostors): not measurable
    assert out[0.25] == pytest.approx(2 / 3)  # highest TAR at FAR exactly 1/4
    assert out[0.375] == pytest.approx(5 / 6)  # halfway along the diagonal
    assert out[0.5] == pytest.approx(1.0) and out[0.9] == pytest.approx(1.0)


def test_tar_at_far_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    same = rng.random(300) < 0.4
    sims = np.round(np.where(same, rng.normal(0.5, 0.2, 300), rng.normal(0.1, 0.2, 300)), 2)  # ties
    fars = (1e-3, 0.01, 0.03, 0.1, 0.37, 1.0)
    out = tar_at_far(sims, same, fars)
    for far in fars:
        ref = _brute_tar(sims, same, far)
        assert (math.isnan(ref) and math.isnan(out[far])) or out[far] == pytest.approx(ref), far


def test_roc_auc_equals_mann_whitney():
    rng = np.random.default_rng(2)
    same = rng.random(120) < 0.5
    sims = np.round(np.where(same, rng.normal(0.4, 0.3, 120), rng.normal(0.0, 0.3, 120)), 1)
    fpr, tpr, thr, area = roc(sims, same)
    g, i = sims[same][:, None], sims[~same][None, :]
    assert area == pytest.approx(((g > i).sum() + 0.5 * (g == i).sum()) / g.size / i.size)
    assert fpr[0] == 0 and tpr[-1] == 1 and len(thr) == len(fpr)


def test_pair_similarities_and_bad_input():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    np.testing.assert_allclose(pair_similarities(emb), [1.0, 1 / math.sqrt(2)])
    np.testing.assert_allclose(pair_similarities(torch.tensor(emb)), [1.0, 1 / math.sqrt(2)])
    with pytest.raises(ValueError, match="2N"):
        pair_similarities(emb[:3])
    with pytest.raises(ValueError, match="issame"):
        kfold_accuracy(np.zeros(20), np.zeros(19, bool))


def test_images_to_tensor_normalisation():
    img = np.zeros((4, 5, 3), np.uint8)
    img[1, 2] = (255, 0, 128)
    x = images_to_tensor([img])
    assert x.shape == (1, 3, 4, 5) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, :, 1, 2].numpy(), [127.5 / 128, -127.5 / 128, 0.5 / 128])
    with pytest.raises(ValueError):
        images_to_tensor(np.zeros((1, 4, 5, 3), np.float32))


def test_flip_embeddings_linear_map_by_hand():
    rng = np.random.default_rng(3)
    h, w, d = 6, 7, 5
    images = rng.integers(0, 256, (7, h, w, 3), dtype=np.uint8)
    m = rng.normal(size=(d, 3 * h * w))

    def embed_fn(x):
        return torch.from_numpy(x.reshape(x.shape[0], -1).double().numpy() @ m.T)

    got = flip_embeddings(embed_fn, list(images), batch_size=3)
    chw = (images.astype(np.float64).transpose(0, 3, 1, 2) - 127.5) / 128
    e = chw.reshape(7, -1) @ m.T + chw[..., ::-1].reshape(7, -1) @ m.T
    ref = e / np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the same through an already normalised float tensor, and without flip
    np.testing.assert_allclose(flip_embeddings(embed_fn, torch.from_numpy(chw).float()), ref, atol=1e-5)
    e1 = chw.reshape(7, -1) @ m.T
    np.testing.assert_allclose(embed_images(embed_fn, images, flip=False),
                               e1 / np.linalg.norm(e1, axis=1, keepdims=True), atol=1e-5)


def test_raw_pixel_floor_identical_images():
    rng = np.random.default_rng(4)
    faces = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(20)]
    images, issame = [], []
    for k in range(10):  # pairs: identical images (same) or two different noise images
        a = faces[2 * k]
        b = a if k % 2 == 0 else faces[2 * k + 1]
        images += [a, b]
        issame.append(k % 2 == 0)
    emb = embed_images(raw_pixel_embed_fn, images, batch_size=4)
    sims = pair_similarities(emb)
    np.testing.assert_allclose(sims[0::2], 1.0, atol=1e-6)
    res = evaluate_pairs(raw_pixel_embed_fn, images, issame, batch_size=4, n_folds=5, fars=(0.2,))
    assert res.accuracy == 1.0 and res.auc == 1.0 and res.tar_at_far[0.2] == 1.0
    assert set(res.to_metrics("lfw/")) == {"lfw/accuracy", "lfw/accuracy_std", "lfw/threshold",
                                           "lfw/auc", "lfw/tar_at_far_0.2"}
    with pytest.raises(ValueError, match="pairs"):
        evaluate_pairs(raw_pixel_embed_fn, images[:-2], issame)
