"""Exponential moving average of model weights (the EMA weights VIGFace samples with).

Built on ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (a fused
``torch._foreach_lerp_`` per update). Buffers are copied, not averaged (the DiT's only buffer is the
fixed positional embedding).

``warmup=True`` ramps the decay in for short runs: ``decay_n = min(decay, (1 + n) / (10 + n))`` at the
n-th update (the warm-up of the classic TensorFlow ``ExponentialMovingAverage(num_updates=...)``), so after
a few thousand CPU steps the average no longer holds a visible share of the zero-initialised model
(with a fixed 0.999 it still holds 0.999^1900 = 15% of it after 1900 steps).
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """``ema <- decay * ema + (1 - decay) * param`` on every ``update``; starts as a copy of ``model``."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.warmup = decay, warmup
        avg_fn = _warmup_ema_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=avg_fn, use_buffers=False)
        self.averaged.requires_grad_(False)
        # AveragedModel copies the model on its first update; the copy made here already is ema_0,
        # so count it as averaged and every update is an EMA step.
        self.averaged.n_averaged.fill_(1)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model (use for evaluation and sampling)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One EMA step towards the current parameters of ``model``."""
        self.averaged.update_parameters(model)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the parameters of ``model`` with the EMA parameters."""
        for p_model, p_ema in zip(model.parameters(), self.module.parameters(), strict=True):
            p_model.copy_(p_ema.to(p_model.device, p_model.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if float(state["decay"]) != self.decay or bool(state.get("warmup", False)) != self.warmup:
            raise ValueError(f"EMA state has decay {state['decay']} warmup {state.get('warmup', False)}, "
                             f"this EMA has {self.decay} warmup {self.warmup}")
        self.averaged.load_state_dict(state["averaged"])


def warmup_decay(decay: float, num_updates: int) -> float:
    """min(decay, (1 + n) / (10 + n)): the decay of the n-th update with warm-up."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def _warmup_ema_fn(decay: float):
    """``multi_avg_fn`` for ``AveragedModel``: ema <- lerp(ema, param, 1 - warmup_decay(decay, n))."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged) -> None:
        weight = 1.0 - warmup_decay(decay, int(num_averaged) - 1)  # n_averaged starts at 1 (see __init__)
        torch._foreach_lerp_(ema_params, params, weight)

    return update
