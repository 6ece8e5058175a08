"""DDIM sampling with classifier-free guidance on the x0 prediction (VIGFace eq. 7, Appendix A).

The update is done here, not with ``DDIMScheduler.step``: ``step`` takes the previous timestep as
``t - T // N``, which is off the trailing timestep list when N does not divide T (N = 7: 999 -> 857
instead of 856, and the last step ends at 0 instead of the clean image). Here ``prev_t`` is the next
entry of the list, and -1 (alpha_bar = 1, the clean image) after the last one.
"""
from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from generation.diffusion import resolve_scheduler, eps_from_v, x0_from_v

MAX_GUIDANCE = 20.0


def ddim_timesteps(steps: int, scheduler: DDIMScheduler | None = None) -> list[tuple[int, int]]:
    """(t, prev_t) pairs of the trailing schedule for ``steps`` steps; the last prev_t is -1."""
    sched = resolve_scheduler(scheduler)
    total = sched.config.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
        raise ValueError(f"steps must be an int in [1, {total}], got {steps!r}")
    fresh = DDIMScheduler.from_config(sched.config)  # set_timesteps mutates; keep the shared one clean
    fresh.set_timesteps(steps)
    ts = [int(t) for t in fresh.timesteps]
    return list(zip(ts, ts[1:] + [-1]))


def alpha_bar(t: int, scheduler: DDIMScheduler | None = None) -> float:
    """alpha_bar_t, with t = -1 meaning the clean end point (``final_alpha_cumprod``)."""
    sched = resolve_scheduler(scheduler)
    return float(sched.final_alpha_cumprod if t < 0 else sched.alphas_cumprod[t])


def ddim_sigma(ab_t: float, ab_prev: float, eta: float) -> float:
    """DDIM noise scale (Song et al. 2021, eq. 16): eta * sqrt((1-ab_prev)/(1-ab_t) * (1 - ab_t/ab_prev))."""
    return eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, ab_prev: float, sigma: float, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """DDIM update (Song et al. 2021, eq. 12): sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z."""
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
    return x_prev if sigma == 0 or noise is None else x_prev + sigma * noise


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """g * cond + (1 - g) * uncond  # VIGFace eq. 7"""
    return guidance * cond + (1 - guidance) * uncond


def guided_prediction(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    t: int,
    prototypes: torch.Tensor,
    landmark_maps: torch.Tensor | None,
    guidance: float,
    scheduler: DDIMScheduler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided (x0, eps) at timestep ``t`` from ONE forward of the batch [cond; uncond].

    The unconditional half keeps the landmark map and drops only the prototype. x0 is guided by
    eq. 7; eps is guided with the same weights, which equals the eps implied by the guided x0 at
    this x_t (both are affine in v with the same x_t term).
    """
    b = x_t.shape[0]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x_t.device)
    x_in = torch.cat([x_t, x_t])
    t_in = torch.full((2 * b,), t, dtype=torch.long, device=x_t.device)
    lm_in = None if landmark_maps is None else torch.cat([landmark_maps, landmark_maps])
    v = model(x_in, t_in, torch.cat([prototypes, prototypes]), lm_in, drop).float()
    x0_c, x0_u = x0_from_v(x_in, v, t_in, scheduler).chunk(2)
    eps_c, eps_u = eps_from_v(x_in, v, t_in, scheduler).chunk(2)
    return cfg_combine(x0_c, x0_u, guidance), cfg_combine(eps_c, eps_u, guidance)


def validate_sampling(steps: int, guidance: float, eta: float, scheduler: DDIMScheduler | None = None) -> None:
    """ValueError unless ``steps`` is an int in [1, T], ``guidance`` in [0, MAX_GUIDANCE], ``eta`` in [0, 1]."""
    ddim_timesteps(steps, scheduler)  # validates the step count against the schedule
    if not 0.0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE}], got {guidance}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")


Generators = torch.Generator | list[torch.Generator] | None


def _randn(shape: tuple, generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard-normal noise of ``shape``; with a list of generators, row ``i`` comes from ``generator[i]``
    alone (drawn where that generator lives), so a row's noise does not depend on the batch it is in."""
    if isinstance(generator, list):
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prototypes: torch.Tensor,
    landmark_maps: torch.Tensor | None,
    steps: int = 50,
    guidance: float = 4.0,
    generator: Generators = None,
    eta: float = 0.0,
    scheduler: DDIMScheduler | None = None,
) -> torch.Tensor:
    """Generate images [B, C, S, S] in [-1, 1] for prototypes [B, D] and landmark maps [B or 1, L, S, S].

    Deterministic for a given ``generator`` state (x_T and, for eta > 0, the step noise come from it).
    A list of B generators gives each row its own noise stream: row ``i``'s image is then a function
    of ``generator[i]`` alone, whatever else is in the batch.
    """
    cfg = getattr(model, "module", model).config
    validate_sampling(steps, guidance, eta, scheduler)
    if prototypes.ndim != 2 or prototypes.shape[1] != cfg.cond_dim:
        raise ValueError(f"prototypes must be [B, {cfg.cond_dim}] for this model, got {tuple(prototypes.shape)}")
    pairs = ddim_timesteps(steps, scheduler)
    b, device = prototypes.shape[0], prototypes.device
    if isinstance(generator, list) and len(generator) != b:
        raise ValueError(f"{len(generator)} generators for {b} prototypes")
    if landmark_maps is not None and landmark_maps.shape[0] == 1 and b > 1:
        landmark_maps = landmark_maps.expand(b, *landmark_maps.shape[1:])
    x = _randn((b, cfg.in_channels, cfg.image_size, cfg.image_size), generator, device)
    for t, prev in pairs:
        x0, eps = guided_prediction(model, x, t, prototypes, landmark_maps, guidance, scheduler)
        ab_prev = alpha_bar(prev, scheduler)
        sigma = ddim_sigma(alpha_bar(t, scheduler), ab_prev, eta)
        x = ddim_step(x0, eps, ab_prev, sigma, _randn(x.shape, generator, device) if sigma > 0 else None)
    return x.clamp(-1.0, 1.0)
