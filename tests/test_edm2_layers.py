"""EDM2 magnitude-preserving primitives, preconditioning, loss and the lr schedule against their formulas."""
import math

import pytest
import torch

from generation.edm2_layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, pixel_norm_attention
from generation.edm2_loss import edm2_loss, learning_rate, loss_weight, sample_sigma
from generation.edm2_unet import EDM2Config, EDM2Denoiser, precondition


def _ms(x):
    return float(x.detach().double().square().mean())


def test_mp_primitives_keep_unit_magnitude():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 32, 8, 8, generator=g)
    b = torch.randn(64, 48, 8, 8, generator=g)
    assert _ms(normalize(a * 7.3)) == pytest.approx(1.0, rel=1e-3)
    assert _ms(mp_silu(a)) == pytest.approx(1.0, rel=0.05)
    for t in (0.3, 0.5, 0.8):
        assert _ms(mp_sum(a, torch.randn_like(a), t)) == pytest.approx(1.0, rel=0.05)
        cat = mp_cat(a, b, t=t)
        assert cat.shape[1] == 80 and _ms(cat) == pytest.approx(1.0, rel=0.05)
    assert _ms(MPFourier(256)(torch.randn(512, generator=g))) == pytest.approx(1.0, rel=0.05)
    conv = MPConv(8, 16, (3, 3))  # large image: zero padding at the border lowers the magnitude slightly
    assert _ms(conv(torch.randn(4, 8, 64, 64, generator=g))) == pytest.approx(1.0, rel=0.05)
    lin = MPConv(32, 40)
    assert _ms(lin(torch.randn(4096, 32, generator=g))) == pytest.approx(1.0, rel=0.05)
    qkv = torch.randn(8, 3 * 32, 4, 4, generator=g)
    assert _ms(pixel_norm_attention(qkv, 2)) <= 1.05  # convex combinations of unit vectors


def test_mpconv_forces_weight_normalisation_in_training_only():
    conv = MPConv(6, 5, (3, 3))
    with torch.no_grad():
        conv.weight.mul_(9.0)
    conv.eval()
    conv(torch.randn(1, 6, 4, 4))
    assert conv.weight.flatten(1).norm(dim=1).mean() > 20  # untouched in eval
    conv.train()
    conv(torch.randn(1, 6, 4, 4))
    per_row = conv.weight.flatten(1).square().mean(dim=1)
    assert torch.allclose(per_row, torch.ones(5), atol=1e-3)  # unit mean square per output channel


def _small(num_classes=4, **kw):
    return EDM2Config(image_size=8, num_classes=num_classes, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                      attn_resolutions=[4], channels_per_head=8, logvar_channels=16, **kw)


def test_zero_init_output_and_preconditioning_formulas():
    torch.manual_seed(0)
    model = EDM2Denoiser(_small())
    x = torch.randn(3, 3, 8, 8)
    sigma = torch.tensor([0.05, 1.0, 20.0])
    c = torch.eye(4)[:3]
    f = model.unet(x, torch.zeros(3), c)
    assert torch.count_nonzero(f) == 0  # out_gain starts at 0
    sd = 0.5
    d = model(x, sigma, c)
    s = sigma.reshape(-1, 1, 1, 1).double()
    c_skip_ref = sd ** 2 / (s ** 2 + sd ** 2)
    torch.testing.assert_close(d.double(), c_skip_ref * x.double(), rtol=1e-5, atol=1e-6)  # F = 0 -> D = c_skip x
    c_skip, c_out, c_in, c_noise = precondition(torch.tensor(2.0, dtype=torch.float64), sd)
    assert float(c_skip) == pytest.approx(0.25 / 4.25)
    assert float(c_out) == pytest.approx(2 * 0.5 / math.sqrt(4.25))
    assert float(c_in) == pytest.approx(1 / math.sqrt(4.25))
    assert float(c_noise) == pytest.approx(math.log(2.0) / 4)


def test_loss_equals_formula_and_lr_schedule():
    g = torch.Generator().manual_seed(1)
    d, x = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    sigma = torch.tensor([0.1, 0.5, 2.0, 9.0])
    u = torch.randn(4, 1, 1, 1, generator=g)
    ref = 0.0
    for i in range(4):
        w = (sigma[i] ** 2 + 0.25) / (sigma[i] * 0.5) ** 2
        ref += float((w / u[i].exp() * (d[i] - x[i]) ** 2 + u[i]).mean()) / 4
    assert float(edm2_loss(d, x, sigma, u, 0.5)) == pytest.approx(ref, rel=1e-5)
    assert float(loss_weight(torch.tensor(0.5), 0.5)) == pytest.approx(8.0)
    s = sample_sigma(20000, -0.8, 1.6, torch.Generator().manual_seed(0))
    assert float(s.log().mean()) == pytest.approx(-0.8, abs=0.05) and float(s.log().std()) == pytest.approx(1.6, rel=0.03)
    assert learning_rate(0, 0.01, 100, 10) == pytest.approx(0.001)  # ramp-up
    assert learning_rate(49, 0.01, 100, 10) == pytest.approx(0.01)
    assert learning_rate(399, 0.01, 100, 10) == pytest.approx(0.01 / 2)  # 1/sqrt(400/100)


def test_label_path_is_linear_and_checks_length():
    torch.manual_seed(0)
    model = EDM2Denoiser(_small(num_classes=5))
    unet = model.unet
    ci, cj = torch.eye(5)[1:2], torch.eye(5)[3:4]
    lab = lambda c: unet.emb_label(c * math.sqrt(5))  # noqa: E731
    torch.testing.assert_close(lab(0.7 * ci + 0.4 * cj), 0.7 * lab(ci) + 0.4 * lab(cj), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(lab(torch.zeros(1, 5))) == 0  # the zero vector is the unconditional input
    x = torch.randn(3, 3, 8, 8)
    rows = torch.stack([torch.eye(5)[0], 0.7 * torch.eye(5)[1] + 0.7 * torch.eye(5)[2], torch.zeros(5)])
    assert torch.isfinite(model(x, torch.ones(3), rows)).all()
    with pytest.raises(ValueError, match="num_classes=5"):
        model(x, torch.ones(3), torch.zeros(3, 4))
