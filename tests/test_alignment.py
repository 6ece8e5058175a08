import cv2
import numpy as np
import pytest

from fr.data.alignment import (
    ARCFACE_TEMPLATE,
    DegenerateLandmarksError,
    align_face,
    estimate_similarity,
    template_for_size,
    transform_points,
)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """Hand-built (2, 3) similarity: rotate by angle, scale, then translate."""
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, [[tx], [ty]]])


def _textured(size: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (blurred noise) so bilinear resampling is accurate."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.float32)
    return np.clip(cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def test_template_values_and_scaling():
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    np.testing.assert_allclose(ARCFACE_TEMPLATE[2], [56.0252, 71.7366], atol=1e-4)
    np.testing.assert_allclose(template_for_size(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for_size(224), 2 * ARCFACE_TEMPLATE, rtol=1e-6)
    with pytest.raises(ValueError):
        template_for_size(0)


def test_template_aligns_to_itself():
    image = _textured(112)
    mat = estimate_similarity(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(mat, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    aligned, lm = align_face(image, ARCFACE_TEMPLATE)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    assert lm.dtype == np.float32 and lm.shape == (5, 2)
    np.testing.assert_allclose(lm, ARCFACE_TEMPLATE, atol=1e-3)
    np.testing.assert_array_equal(aligned, image)  # identity warp is exact
    # flat (10,) input is accepted too
    _, lm_flat = align_face(image, ARCFACE_TEMPLATE.reshape(-1))
    np.testing.assert_allclose(lm_flat, ARCFACE_TEMPLATE, atol=1e-3)


def test_recovers_known_similarity_exactly():
    fwd = _similarity(25.0, 1.7, 60.0, -10.0)
    src = ARCFACE_TEMPLATE.astype(np.float64)
    dst = src @ fwd[:, :2].T + fwd[:, 2]
    np.testing.assert_allclose(estimate_similarity(src, dst), fwd, atol=1e-9)


def test_least_squares_beats_perturbed_fits():
    # With noisy points, the closed form must minimise the squared error over all similarities:
    # no random nearby similarity may do better (brute-force check of optimality).
    rng = np.random.default_rng(1)
    src = ARCFACE_TEMPLATE.astype(np.float64)
    dst = src @ _similarity(-12, 0.8, 5, 9)[:, :2].T + [5, 9] + rng.normal(0, 2.0, (5, 2))
    best = estimate_similarity(src, dst)

    def sse(m):
        return np.sum((src @ m[:, :2].T + m[:, 2] - dst) ** 2)

    a, b = best[0, 0], best[1, 0]  # similarity = [[a, -b], [b, a]]
    for _ in range(300):
        da, db, tx, ty = rng.normal(0, [0.01, 0.01, 0.3, 0.3])
        m = np.array([[a + da, -(b + db), best[0, 2] + tx], [b + db, a + da, best[1, 2] + ty]])
        assert sse(m) >= sse(best) - 1e-9
    # no reflection: the linear part has positive determinant
    assert np.linalg.det(best[:, :2]) > 0


def test_rotated_scaled_shifted_face_aligns_back():
    face = _textured(112, seed=3)
    fwd = _similarity(25.0, 1.7, 90.0, 30.0)
    canvas = cv2.warpAffine(face, fwd, (300, 300), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lm_canvas = transform_points(fwd, ARCFACE_TEMPLATE)
    assert lm_canvas.min() > 0 and lm_canvas.max() < 300
    aligned, lm = align_face(canvas, lm_canvas)
    assert np.abs(lm - ARCFACE_TEMPLATE).max() < 1.0
    centre = (slice(20, 92), slice(20, 92))
    diff = np.abs(aligned[centre].astype(np.float32) - face[centre].astype(np.float32))
    assert diff.mean() < 4.0, diff.mean()
    # and a wrong alignment would not pass that check
    other = _textured(112, seed=4)
    assert np.abs(other[centre].astype(np.float32) - face[centre].astype(np.float32)).mean() > 20


def test_other_output_size():
    face = _textured(112, seed=5)
    aligned, lm = align_face(face, ARCFACE_TEMPLATE, size=224)
    assert aligned.shape == (224, 224, 3)
    np.testing.assert_allclose(lm, template_for_size(224), atol=1e-3)


@pytest.mark.parametrize(
    "landmarks",
    [
        np.full((5, 2), 40.0),  # all coincident
        np.array([[40, 40]] * 4 + [[40.0000001, 40]]),  # nearly coincident
        np.where(np.eye(5, 2) > 0, np.nan, 1.0) + ARCFACE_TEMPLATE,  # NaN
        np.full((5, 2), np.inf),
        np.zeros((4, 2)),  # wrong shape
        np.zeros((5, 3)),
        np.zeros(9),
        np.array([["a", "b"]] * 5),
    ],
)
def test_degenerate_landmarks_raise(landmarks):
    with pytest.raises(DegenerateLandmarksError):
        align_face(_textured(64), landmarks)


def test_degenerate_destination_and_scale():
    with pytest.raises(DegenerateLandmarksError):
        estimate_similarity(ARCFACE_TEMPLATE, np.full((5, 2), 3.0))
    with pytest.raises(DegenerateLandmarksError, match="scale"):
        estimate_similarity(ARCFACE_TEMPLATE * 5e-4, ARCFACE_TEMPLATE)  # 2000x magnification
    assert issubclass(DegenerateLandmarksError, ValueError)


def test_bad_image_raises():
    with pytest.raises(ValueError, match="RGB uint8"):
        align_face(np.zeros((50, 50), np.uint8), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="RGB uint8"):
        align_face(np.zeros((50, 50, 3), np.float32), ARCFACE_TEMPLATE)
