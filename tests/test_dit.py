"""DiT (adaLN-Zero, prototype + landmark conditioning), its FLOP count, and the landmark maps."""
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from generation.dit import (
    DiTConfig,
    build_dit,
    dit_config,
    flops_per_forward,
    load_dit,
    sample_drop_mask,
    save_dit,
)
from generation.landmark_map import render_landmark_map

S = 16  # test image size


def small_dit(**kw):
    torch.manual_seed(0)
    return build_dit("tiny", image_size=S, patch_size=4, **kw)


def randomized(model):
    """Perturb every parameter so the zero-initialised output layers produce non-zero output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(b=4, seed=0, landmark_channels=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, S, S, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    proto = torch.randn(b, 512, generator=g)
    lm = torch.rand(b, landmark_channels, S, S, generator=g)
    return x, t, proto, lm


def test_output_exactly_zero_at_init():
    model = small_dit()
    out = model(*inputs())
    assert out.shape == (4, 3, S, S)
    assert torch.equal(out, torch.zeros_like(out))


def test_named_sizes():
    expect = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for name, (depth, hidden, heads) in expect.items():
        c = dit_config(name)
        assert (c.depth, c.hidden_size, c.num_heads, c.patch_size, c.image_size) == (depth, hidden, heads, 4, 112)
        assert c.num_tokens == 784
    with pytest.raises(ValueError, match="unknown DiT size"):
        dit_config("M")


@pytest.mark.parametrize("landmark_channels", [5, 0])
def test_flops_match_torch_flop_counter(landmark_channels):
    model = small_dit(landmark_channels=landmark_channels)
    x, t, proto, lm = inputs(1, landmark_channels=max(landmark_channels, 1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, proto, lm if landmark_channels else None)
    assert flops_per_forward(model.config) == counter.get_total_flops()


def test_flops_dit_b4_at_112():
    # DESIGN.md: DiT-B/4 at 112x112 is about 156 GFLOPs per forward.
    assert abs(flops_per_forward(dit_config("B")) / 1e9 - 156) < 1.5


def test_dropped_rows_do_not_depend_on_prototype():
    model = randomized(small_dit())
    x, t, p1, lm = inputs()
    p2 = torch.randn_like(p1) * 3
    drop = torch.tensor([True, False, True, False])
    with torch.no_grad():
        o1 = model(x, t, p1, lm, drop)
        o2 = model(x, t, p2, lm, drop)
        null = model(x, t, None, lm)  # every row on the null embedding
    torch.testing.assert_close(o1[drop], o2[drop], rtol=0, atol=1e-6)
    torch.testing.assert_close(o1[drop], null[drop], rtol=0, atol=1e-6)
    assert (o1[~drop] - o2[~drop]).abs().amax() > 1e-3


def test_rows_independent_and_landmarks_matter():
    model = randomized(small_dit())
    x, t, proto, lm = inputs()
    with torch.no_grad():
        full = model(x, t, proto, lm)
        single = model(x[2:3], t[2:3], proto[2:3], lm[2:3])
        moved = model(x, t, proto, lm.roll(3, dims=-1))
    torch.testing.assert_close(full[2:3], single, rtol=1e-5, atol=1e-5)
    assert (full - moved).abs().amax() > 1e-3


def test_gradient_checkpointing_same_output_and_grads():
    results = []
    for flag in (False, True):
        model = randomized(small_dit(grad_checkpointing=flag)).train()
        out = model(*inputs(), torch.tensor([True, False, False, False]))  # every parameter gets a grad
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)


def test_save_load_roundtrip(tmp_path):
    model = randomized(small_dit())
    save_dit(model, tmp_path / "dit")
    loaded = load_dit(tmp_path / "dit").eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(*inputs()), loaded(*inputs()))
    assert DiTConfig.from_dict(model.config.to_dict()) == model.config


def test_config_errors():
    with pytest.raises(ValueError, match="unknown keys \\['widht'\\]"):
        DiTConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig(hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="image_size divisible by patch_size"):
        dit_config("tiny", image_size=30, patch_size=4)


def test_forward_validation():
    model = small_dit()
    x, t, proto, lm = inputs()
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :, :8], t, proto, lm)
    with pytest.raises(ValueError, match="prototype must be"):
        model(x, t, proto[:, :128], lm)
    with pytest.raises(ValueError, match="landmark_map must be"):
        model(x, t, proto, None)
    with pytest.raises(ValueError, match="drop_mask must be a bool"):
        model(x, t, proto, lm, torch.zeros(4))
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:2], proto, lm)


def test_sample_drop_mask():
    g = torch.Generator().manual_seed(0)
    m = sample_drop_mask(20000, 0.1, g)
    assert m.dtype == torch.bool and m.shape == (20000,)
    assert abs(m.float().mean().item() - 0.1) < 0.01
    assert torch.equal(sample_drop_mask(64, 0.5, torch.Generator().manual_seed(3)),
                       sample_drop_mask(64, 0.5, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError):
        sample_drop_mask(4, 1.5)


def test_landmark_map_matches_brute_force():
    pts = np.array([[2.0, 3.0], [9.5, 3.2], [6.0, 6.0], [3.3, 9.0], [8.0, 9.7]], dtype=np.float32)
    size, sigma = 12, 1.7
    out = render_landmark_map(pts, size=size, sigma=sigma)
    assert out.shape == (1, 5, size, size) and out.dtype == torch.float32
    ref = np.zeros((5, size, size))
    for k, (px, py) in enumerate(pts):
        for i in range(size):  # row = y
            for j in range(size):  # column = x
                ref[k, i, j] = math.exp(-((j - px) ** 2 + (i - py) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-6)
    assert out[0, 0, 3, 2] == 1.0  # integer landmark (x=2, y=3) peaks at row 3, column 2
    single = render_landmark_map(torch.from_numpy(pts)[None].repeat(2, 1, 1), size=size, sigma=sigma, channels=1)
    assert single.shape == (2, 1, size, size)
    np.testing.assert_allclose(single[1, 0].numpy(), ref.max(axis=0), atol=1e-6)


def test_landmark_map_bad_input():
    with pytest.raises(ValueError, match=r"\(5, 2\) or \(B, 5, 2\)"):
        render_landmark_map(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(5, 2\) or \(B, 5, 2\)"):
        render_landmark_map(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        render_landmark_map(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="channels"):
        render_landmark_map(np.zeros((5, 2)), channels=3)
