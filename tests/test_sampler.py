"""DDIM sampling with classifier-free guidance: timesteps, update rule, guidance, determinism, validation."""
from fractions import Fraction

import pytest
import torch

from generation.diffusion import build_scheduler
from generation.dit import build_dit
from generation.sampler import ddim_timesteps, guided_prediction, sample

S, B = 8, 3


def expected_trailing(n, total=1000):
    """Trailing spacing computed independently: round-half-up(total - i * total / n) - 1 for i < n."""
    return [int(Fraction(total * (n - i), n) + Fraction(1, 2)) - 1 for i in range(n)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_dit("tiny", image_size=S, patch_size=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # leave the zero init so that the output depends on every input
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def cond():
    g = torch.Generator().manual_seed(5)
    return torch.randn(B, 512, generator=g), torch.rand(B, 5, S, S, generator=g)


class Counting(torch.nn.Module):
    """Wraps a model and records the batch size of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.batches = inner, inner.config, []

    def forward(self, *args):
        self.batches.append(args[0].shape[0])
        return self.inner(*args)


@pytest.mark.parametrize("n", [50, 7, 1, 1000])
def test_trailing_timesteps_and_prev_from_list(n):
    ts = expected_trailing(n)
    pairs = ddim_timesteps(n)
    assert [t for t, _ in pairs] == ts
    assert [p for _, p in pairs] == ts[1:] + [-1]
    assert ts[0] == 999
    if n == 50:
        assert ts == list(range(999, 0, -20))
    if n == 7:
        assert ts == [999, 856, 713, 570, 428, 285, 142]


def test_terminal_alpha_bar_zero():
    assert build_scheduler().alphas_cumprod[-1].item() == 0.0


def reference_conditional_ddim(model, protos, lms, steps, seed):
    """Plain DDIM (eta 0) with only the conditional pass, written from the formulas."""
    ab = build_scheduler().alphas_cumprod
    ts = expected_trailing(steps)
    x = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for i, t in enumerate(ts):
            v = model(x, torch.full((B,), t), protos, lms, torch.zeros(B, dtype=torch.bool))
            a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
            x0, eps = a * x - s * v, s * x + a * v
            ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x.clamp(-1, 1)


@pytest.mark.parametrize("steps", [50, 7])
def test_guidance_one_equals_conditional_only(model, cond, steps):
    out = sample(model, *cond, steps=steps, guidance=1.0, generator=torch.Generator().manual_seed(3))
    ref = reference_conditional_ddim(model, *cond, steps, seed=3)
    assert out.shape == (B, 3, S, S)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    assert out.abs().amax() <= 1.0 and out.std() > 0.05


def diffusers_step_sampler(model, protos, lms, steps, seed):
    """Conditional-only sampling with diffusers' DDIMScheduler.step (prev_t = t - 1000 // steps)."""
    sched = build_scheduler()
    sched.set_timesteps(steps)
    x = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in sched.timesteps:
            v = model(x, t.expand(B), protos, lms, torch.zeros(B, dtype=torch.bool))
            x = sched.step(v, t, x).prev_sample
    return x.clamp(-1, 1)


def test_matches_diffusers_step_when_n_divides_1000_and_not_otherwise(model, cond):
    ours = sample(model, *cond, steps=50, guidance=1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, diffusers_step_sampler(model, *cond, 50, seed=4), rtol=0, atol=1e-4)
    # N = 7: step() goes 999 -> 857 and ends at t = 0, not at the clean image; ours differs from it.
    ours7 = sample(model, *cond, steps=7, guidance=1.0, generator=torch.Generator().manual_seed(4))
    assert (ours7 - diffusers_step_sampler(model, *cond, 7, seed=4)).abs().amax() > 1e-3


def test_guided_prediction_one_batched_forward_eq7(model, cond):
    protos, lms = cond
    x = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(6))
    t, g = 640, 4.0
    counting = Counting(model)
    with torch.no_grad():
        x0_g, eps_g = guided_prediction(counting, x, t, protos, lms, g)
        tt = torch.full((B,), t)
        v_c = model(x, tt, protos, lms, torch.zeros(B, dtype=torch.bool))
        v_u = model(x, tt, protos, lms, torch.ones(B, dtype=torch.bool))  # landmarks kept, prototype dropped
    assert counting.batches == [2 * B]
    ab = build_scheduler().alphas_cumprod[t]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x0_c, x0_u = a * x - s * v_c, a * x - s * v_u
    torch.testing.assert_close(x0_g, g * x0_c + (1 - g) * x0_u, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_g, (x - a * x0_g) / s, rtol=0, atol=1e-4)  # eps implied by guided x0


def test_sampling_deterministic_given_seed(model, cond):
    for eta in (0.0, 1.0):
        runs = [sample(model, *cond, steps=5, guidance=4.0, eta=eta, generator=torch.Generator().manual_seed(s))
                for s in (11, 11, 12)]
        assert torch.equal(runs[0], runs[1])
        assert (runs[0] - runs[2]).abs().amax() > 1e-3


def test_single_landmark_map_broadcasts(model, cond):
    protos, lms = cond
    a = sample(model, protos, lms[:1], steps=3, generator=torch.Generator().manual_seed(1))
    b = sample(model, protos, lms[:1].expand(B, -1, -1, -1), steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_sampler_validation(model, cond):
    protos, lms = cond
    for bad in (-0.5, 20.5):
        with pytest.raises(ValueError, match="guidance"):
            sample(model, protos, lms, steps=2, guidance=bad)
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="steps"):
            sample(model, protos, lms, steps=bad)
    with pytest.raises(ValueError, match="prototypes must be"):
        sample(model, protos[:, :256], lms, steps=2)
    with pytest.raises(ValueError, match="eta"):
        sample(model, protos, lms, steps=2, eta=-1.0)
