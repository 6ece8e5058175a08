import struct

import numpy as np
import pytest

from evaluation.plots import image_grid, plot_bars, plot_roc, plot_similarity_histogram
from fr.data.images import decode_image


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_roc_and_histogram_write_pngs(tmp_path):
    fpr = np.array([0.0, 0.001, 0.01, 0.1, 1.0])
    tpr = np.array([0.2, 0.5, 0.8, 0.95, 1.0])
    fig = plot_roc({"a": (fpr, tpr, 0.9), "b": (fpr, tpr ** 2, 0.8)}, tmp_path / "roc.png")
    assert _png_size(tmp_path / "roc.png") == (600, 450)
    assert len(fig.axes[0].get_lines()) == 2
    rng = np.random.default_rng(0)
    same = rng.random(100) < 0.5
    plot_similarity_histogram(rng.normal(size=100), same, tmp_path / "sub" / "hist.png", title="x")
    assert _png_size(tmp_path / "sub" / "hist.png") == (600, 450)
    with pytest.raises(ValueError):
        plot_roc({"a": (fpr, tpr[:-1], 0.9)})


def test_plot_bars_with_reference(tmp_path):
    fig = plot_bars({"lfw": 0.99, "cfp_fp": 0.9, "agedb": 0.95}, {"lfw": 0.994}, tmp_path / "b.png", "acc")
    assert _png_size(tmp_path / "b.png") == (440, 450)  # width grows with the bar count: (0.8*3+2) in
    assert len(fig.axes[0].patches) == 6  # 3 measured + 3 reference (missing one drawn as NaN)


def test_image_grid_exact_layout(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (5, 4, 3), dtype=np.uint8) for _ in range(5)]
    grid = image_grid(imgs, nrow=3, path=tmp_path / "g.png", pad=1, pad_value=7)
    assert grid.shape == (1 + 2 * 6, 1 + 3 * 5, 3)
    expected = np.full_like(grid, 7)
    for k, img in enumerate(imgs):
        r, c = divmod(k, 3)
        expected[1 + r * 6:1 + r * 6 + 5, 1 + c * 5:1 + c * 5 + 4] = img
    np.testing.assert_array_equal(grid, expected)
    assert _png_size(tmp_path / "g.png") == (16, 13)
    np.testing.assert_array_equal(decode_image((tmp_path / "g.png").read_bytes()), expected)


def test_image_grid_labels_and_bad_input():
    imgs = [np.zeros((40, 40, 3), np.uint8)] * 2
    grid = image_grid(imgs, nrow=2, labels=["id 1", "id 2"], pad=0)
    assert grid[:, :40].max() > 0 and grid.shape == (40, 80, 3)
    with pytest.raises(ValueError, match="image 1"):
        image_grid([imgs[0], np.zeros((40, 41, 3), np.uint8)], nrow=2)
