"""Noise schedule, v-parameterisation and training losses of the VIGFace diffusion model.

Conventions:
- pixels: ``x0`` is a float image in [-1, 1], i.e. ``uint8 / 127.5 - 1``.
- schedule: diffusers ``DDIMScheduler`` with the cosine schedule rescaled to zero terminal SNR
  (so ``alphas_cumprod[999] == 0``), trailing timesteps, v-prediction (VIGFace Appendix A).
- with ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)`` (``a^2 + s^2 = 1``):
  ``x_t = a x0 + s eps``, ``v = a eps - s x0``, ``x0 = a x_t - s v``, ``eps = s x_t + a v``.
  None of these divides by ``a`` or ``s``, so all are exact at t = 999 where ``a = 0``.
- identity loss input: the FR backbone callable receives ``to_fr_input(x0_hat)``, i.e. the FR
  convention ``(uint8 - 127.5) / 128`` (= ``x * 127.5 / 128`` for ``x`` in [-1, 1]).

Every helper taking ``scheduler=None`` uses the shared default scheduler (``default_scheduler()``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

NUM_TRAIN_TIMESTEPS = 1000
FR_INPUT_SCALE = 127.5 / 128.0  # [-1, 1] pixels -> (uint8 - 127.5) / 128
DEFAULT_ID_WEIGHT = 0.1  # our choice: the paper gives no weight for eq. 6


def build_scheduler(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> DDIMScheduler:
    """The VIGFace DDIM scheduler: cosine betas, zero terminal SNR, trailing spacing, v-prediction."""
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,  # the step after the last trailing timestep lands on the clean image
    )


@lru_cache(maxsize=1)
def default_scheduler() -> DDIMScheduler:
    """A shared ``build_scheduler()``; used only for its alphas (never ``set_timesteps`` on it)."""
    return build_scheduler()


def resolve_scheduler(scheduler: DDIMScheduler | None) -> DDIMScheduler:
    """``scheduler`` itself, or the shared default when None."""
    return default_scheduler() if scheduler is None else scheduler


def signal_noise_coeffs(
    t: torch.Tensor, like: torch.Tensor, scheduler: DDIMScheduler | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) shaped to broadcast against ``like``."""
    t = torch.as_tensor(t, device=like.device).long()
    ab = resolve_scheduler(scheduler).alphas_cumprod.to(device=like.device, dtype=torch.float32)[t]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return ab.sqrt().to(like.dtype).reshape(shape), (1 - ab).sqrt().to(like.dtype).reshape(shape)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, scheduler: DDIMScheduler | None = None) -> torch.Tensor:
    """Forward process x_t = a x0 + s eps (diffusers ``add_noise``)."""
    return resolve_scheduler(scheduler).add_noise(x0, eps, torch.as_tensor(t, device=x0.device))


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, scheduler: DDIMScheduler | None = None) -> torch.Tensor:
    """Velocity target v = a eps - s x0 (diffusers ``get_velocity``; Salimans & Ho)."""
    return resolve_scheduler(scheduler).get_velocity(x0, eps, torch.as_tensor(t, device=x0.device))


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, scheduler: DDIMScheduler | None = None) -> torch.Tensor:
    """v = a eps - s x0, from our own coefficients (same formula as ``v_target``)."""
    a, s = signal_noise_coeffs(t, x0, scheduler)
    return a * eps - s * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, scheduler: DDIMScheduler | None = None) -> torch.Tensor:
    """x0 = a x_t - s v."""
    a, s = signal_noise_coeffs(t, x_t, scheduler)
    return a * x_t - s * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, scheduler: DDIMScheduler | None = None) -> torch.Tensor:
    """eps = s x_t + a v."""
    a, s = signal_noise_coeffs(t, x_t, scheduler)
    return s * x_t + a * v


def sample_timesteps(
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """Uniform training timesteps in [0, num_train_timesteps) as int64 [batch]."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=gen_device).to(device)


def to_fr_input(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels -> the FR backbones' (uint8 - 127.5) / 128 normalisation."""
    return x * FR_INPUT_SCALE


def identity_loss(embeddings: torch.Tensor, prototypes: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Mean over rows of ||f_FR(x0_hat) - w||^2 (VIGFace eq. 6); L2-normalised first if ``normalize``."""
    # VIGFace eq. 6
    if normalize:
        embeddings, prototypes = F.normalize(embeddings, dim=1), F.normalize(prototypes, dim=1)
    return (embeddings - prototypes).pow(2).sum(dim=1).mean()


def training_losses(
    model: torch.nn.Module,
    x0: torch.Tensor,
    prototypes: torch.Tensor,
    landmark_maps: torch.Tensor | None,
    t: torch.Tensor,
    noise: torch.Tensor,
    drop_mask: torch.Tensor | None,
    id_loss_fn=None,
    id_weight: float = DEFAULT_ID_WEIGHT,
    normalize_id: bool = True,
    scheduler: DDIMScheduler | None = None,
) -> dict[str, torch.Tensor]:
    """One training objective: ``loss = mse(v_pred, v) + id_weight * id``.

    ``id_loss_fn`` is the frozen FR backbone: images in the FR convention (``to_fr_input``) ->
    embeddings [n, D]; it is applied to ``x0_hat = a x_t - s v_pred`` of the rows whose condition
    is kept (``drop_mask`` False) and compared with their prototypes (eq. 6). Gradients flow through
    it into the DiT; freezing its parameters is the caller's job. ``id`` is 0 when there is no
    ``id_loss_fn`` or no conditioned row.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"training_losses: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"training_losses: t must be [B={x0.shape[0]}], got {tuple(t.shape)}")
    x_t = add_noise(x0, noise, t, scheduler)
    v_pred = model(x_t, t, prototypes, landmark_maps, drop_mask)
    mse = F.mse_loss(v_pred.float(), v_target(x0, noise, t, scheduler).float())
    id_term = mse.new_zeros(())
    keep = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device) if drop_mask is None else ~drop_mask
    if id_loss_fn is not None and bool(keep.any()):
        x0_hat = x0_from_v(x_t[keep], v_pred[keep], t[keep], scheduler)
        id_term = identity_loss(id_loss_fn(to_fr_input(x0_hat)).float(), prototypes[keep].float(), normalize_id)
    return {"loss": mse + id_weight * id_term, "mse": mse, "id": id_term}
