"""Schedule, v-parameterisation, training losses (incl. a tiny overfit) and EMA."""
import pytest
import torch
import torch.nn.functional as F

from generation.diffusion import (
    add_noise,
    build_scheduler,
    eps_from_v,
    sample_timesteps,
    to_fr_input,
    training_losses,
    v_from_x0_eps,
    v_target,
    x0_from_v,
)
from fr.backbones import build_backbone
from generation.dit import build_dit
from generation.ema import EMA
from generation.landmark_map import render_landmark_map
from generation.sampler import sample


def test_zero_terminal_snr_schedule():
    ab = build_scheduler().alphas_cumprod
    assert ab.shape == (1000,)
    assert ab[-1].item() == 0.0
    assert ab[-2].item() > 0.0
    assert bool((ab[1:] < ab[:-1]).all())
    assert 0.999 < ab[0].item() < 1.0


def test_v_conversions_exact_including_terminal_step():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([999, 0, 1, 500, int(torch.randint(0, 1000, (1,), generator=g)), 998])
    ab = build_scheduler().alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = add_noise(x0, eps, t)
    torch.testing.assert_close(x_t.double(), a * x0.double() + s * eps.double(), rtol=0, atol=1e-6)
    v = v_target(x0, eps, t)
    torch.testing.assert_close(v.double(), a * eps.double() - s * x0.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(v_from_x0_eps(x0, eps, t), v, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_from_v(x_t, v, t), x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_from_v(x_t, v, t), eps, rtol=0, atol=1e-5)
    # t = 999 has alpha_bar = 0: x_t is pure noise and v = -x0.
    assert torch.equal(x_t[0], eps[0]) and torch.equal(v[0], -x0[0])


def test_fr_input_convention():
    u = torch.arange(256, dtype=torch.float32)
    torch.testing.assert_close(to_fr_input(u / 127.5 - 1), (u - 127.5) / 128, rtol=0, atol=1e-6)


class ZeroModel(torch.nn.Module):
    """Predicts v = 0 (so x0_hat = a x_t) and records the batch it saw."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, prototype, landmark_map, drop_mask=None):
        self.seen = (x.shape[0], None if drop_mask is None else drop_mask.clone())
        return torch.zeros_like(x) + self.bias


def test_training_losses_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    b = 5
    x0 = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(b, 3, 8, 8, generator=g)
    protos = torch.randn(b, 16, generator=g)
    t = torch.tensor([999, 10, 300, 700, 0])
    drop = torch.tensor([False, True, False, True, False])
    proj = torch.randn(3 * 8 * 8, 16, generator=g)
    calls = []

    def fr(images):
        calls.append(images.shape[0])
        return images.flatten(1) @ proj

    out = training_losses(ZeroModel(), x0, protos, None, t, noise, drop, id_loss_fn=fr, id_weight=0.3)
    ab = build_scheduler().alphas_cumprod[t].reshape(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert out["mse"].item() == pytest.approx(v.pow(2).mean().item(), rel=1e-5)
    keep = ~drop
    x0_hat = ab[keep].sqrt() * (ab[keep].sqrt() * x0[keep] + (1 - ab[keep]).sqrt() * noise[keep])
    emb = (x0_hat * 127.5 / 128).flatten(1) @ proj
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)  # row t=999: x0_hat = 0, stays 0
    w = protos[keep] / protos[keep].norm(dim=1, keepdim=True)
    expected_id = (emb - w).pow(2).sum(1).mean()
    assert calls == [3]  # only the conditioned rows reach the FR model
    assert out["id"].item() == pytest.approx(expected_id.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["mse"].item() + 0.3 * expected_id.item(), rel=1e-5)
    # every row dropped: no identity term, FR model not called
    out = training_losses(ZeroModel(), x0, protos, None, t, noise, torch.ones(b, dtype=torch.bool), id_loss_fn=fr)
    assert out["id"].item() == 0.0 and calls == [3]
    with pytest.raises(ValueError, match="t must be"):
        training_losses(ZeroModel(), x0, protos, None, t[:2], noise, None)




def test_tiny_dit_overfits_four_images():
    torch.manual_seed(0)
    size = 8
    model = build_dit("tiny", image_size=size, patch_size=2)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = 0.9 * torch.stack(
        [torch.stack([torch.sin(3 * (k + 1) * xx), torch.cos(2 * (k + 1) * yy), xx * yy * (k - 1.5)]) for k in range(4)]
    ).clamp(-1, 1)
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(4, 512, generator=g)
    landmarks = render_landmark_map(torch.rand(4, 5, 2, generator=g) * size, size=size, sigma=1.5)

    eval_t = torch.tensor([300, 500, 700, 900, 999]).repeat_interleave(4)
    eval_noise = torch.randn(20, 3, size, size, generator=g)

    def eval_loss():
        with torch.no_grad():
            return training_losses(model, images.repeat(5, 1, 1, 1), protos.repeat(5, 1),
                                   landmarks.repeat(5, 1, 1, 1), eval_t, eval_noise, None)["mse"].item()

    before = eval_loss()
    rep = 4
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(300):
        t = sample_timesteps(4 * rep, g)
        noise = torch.randn(4 * rep, 3, size, size, generator=g)
        loss = training_losses(model, images.repeat(rep, 1, 1, 1), protos.repeat(rep, 1),
                               landmarks.repeat(rep, 1, 1, 1), t, noise, None)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before / after > 10, (before, after)
    # Sampling from each prototype (conditional only) returns the image trained with it.
    out = sample(model.eval(), protos, landmarks, steps=10, guidance=1.0, generator=torch.Generator().manual_seed(2))
    dist = (out[:, None] - images[None]).pow(2).flatten(2).mean(-1)  # [sample, image]
    assert torch.equal(dist.argmin(1), torch.arange(4)), dist
    # ... and an FR network sees each sample as its own training image's identity: FR cosine to its own
    # image clearly above the cosine to the other three (a fixed random tiny IResNet as f_FR)
    torch.manual_seed(3)
    fr = build_backbone("iresnet_tiny", 64, base_width=8, input_size=16, auto_resize=True).eval()
    with torch.no_grad():
        cos = F.normalize(fr(to_fr_input(out)), dim=1) @ F.normalize(fr(to_fr_input(images)), dim=1).t()
    own, other = cos.diag(), (cos.sum(1) - cos.diag()) / 3
    assert bool((own > other).all()) and float(own.mean() - other.mean()) > 0.05, cos


def test_ema_matches_hand_computation():
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    ema = EMA(model, decay=0.9)
    expected = [p.clone() for p in start]
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step + 1.0)
        ema.update(model)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e)
    restored = EMA(torch.nn.Linear(3, 2), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    target = torch.nn.Linear(3, 2)
    restored.copy_to(target)
    for e, p in zip(expected, target.parameters()):
        torch.testing.assert_close(p.detach(), e)
    with pytest.raises(ValueError):
        EMA(model, decay=1.5)
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(3, 2), decay=0.5).load_state_dict(ema.state_dict())
