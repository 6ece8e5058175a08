"""EDM2 training: log-normal sigma, the loss with the learned log-variance u(sigma), the inverse-sqrt
learning-rate schedule, CFG label dropout and one optimisation step (plain torch, any device)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fr.training import NonFiniteGuard


@dataclass(frozen=True)
class EDM2LossConfig:
    p_mean: float = -0.8  # EDM2 img64 presets
    p_std: float = 1.6
    sigma_data: float = 0.5
    label_dropout: float = 0.1  # CFG: probability of training a row with the zero class vector


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """``sigma = exp(N(P_mean, P_std^2))`` (EDM's log-normal noise-level distribution)."""
    z = torch.randn(n, generator=generator, device="cpu").to(device)
    return (z * p_std + p_mean).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (EDM eq. 8 weighting)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def edm2_loss(denoised: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, logvar: torch.Tensor,
              sigma_data: float) -> torch.Tensor:
    """EDM2 eq. (uncertainty-weighted): ``lambda(sigma)/exp(u(sigma)) ||D - x||^2 + u(sigma)`` per element,
    averaged over the batch and pixels. (EDM2 sums over pixels; Adam is invariant to that constant scale.)"""
    w = loss_weight(sigma, sigma_data).reshape(-1, 1, 1, 1)
    per = w / logvar.exp() * (denoised - target) ** 2 + logvar
    return per.mean()


def learning_rate(step: int, ref_lr: float, ref_steps: int, rampup_steps: int) -> float:
    """EDM2's schedule: ``ref_lr / sqrt(max(t / t_ref, 1))`` times a linear ramp-up ``min(t / t_ramp, 1)``."""
    t = step + 1
    lr = ref_lr / math.sqrt(max(t / ref_steps, 1.0)) if ref_steps > 0 else ref_lr
    if rampup_steps > 0:
        lr *= min(t / rampup_steps, 1.0)
    return lr


def drop_labels(class_vector: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free guidance training: each row becomes the zero (unconditional) vector with prob ``p``."""
    if p <= 0:
        return class_vector
    keep = torch.rand(class_vector.shape[0], generator=generator) >= p
    return class_vector * keep.to(class_vector.device, class_vector.dtype)[:, None]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam(0.9, 0.99), no weight decay (forced weight normalisation keeps the weight norms fixed)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-8)


def edm2_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    class_vector: torch.Tensor, loss_cfg: EDM2LossConfig, generator: torch.Generator,
                    guard: NonFiniteGuard, step: int, lr: float, amp_dtype: torch.dtype | None = None,
                    max_grad_norm: float = 0.0) -> dict[str, torch.Tensor | float]:
    """One step: images in [-1, 1] ``[B, C, S, S]``, class vectors ``[B, num_classes]``.

    ``model`` is an :class:`EDM2Denoiser` (possibly DDP-wrapped). A non-finite loss (agreed by every rank
    when distributed) skips the step; the guard raises after too many in a row.
    """
    device = images.device
    sigma = sample_sigma(images.shape[0], loss_cfg.p_mean, loss_cfg.p_std, generator, device)
    noise = torch.randn(images.shape, generator=generator).to(device) * sigma.reshape(-1, 1, 1, 1)
    labels = drop_labels(class_vector, loss_cfg.label_dropout, generator)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        denoised, logvar = model(images + noise, sigma, labels, return_logvar=True)
    loss = edm2_loss(denoised.float(), images.float(), sigma, logvar.float(), loss_cfg.sigma_data)
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    optimizer.zero_grad(set_to_none=True)
    if not guard.check(bool(finite.item()), step):
        return {"loss": float("nan"), "lr": lr, "skipped": 1.0}
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    optimizer.step()
    return {"loss": loss.detach(), "lr": lr, "grad_norm": grad_norm.detach(), "skipped": 0.0}
