"""Angular/cosine margin heads for face recognition: ArcFace, CosFace, AdaFace.

Every margin maps a cosine matrix to logits with one interface::

    logits = margin(cosine [B, C], labels [B] long, norms [B] | None)

``labels[i] == -1`` means row ``i``'s target class is not among these ``C`` columns (a shard of a
sharded head): the row is only scaled, ``s * cosine``. Otherwise only the target entry
``cosine[i, labels[i]]`` is changed by the margin and every entry is multiplied by ``s``.

``norms`` are the feature norms of the (un-normalised) embeddings; only AdaFace uses them. A
non-finite norm (NaN) marks a row without a quality signal (e.g. a VIGFace virtual embedding): AdaFace
leaves it out of its batch statistics and gives it the neutral quality ``n = 0``.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

# Keeps acos/sqrt away from +-1 where their derivatives are infinite.
_COS_EPS = 1e-7


def arcface_target(cos_target: Tensor, m: float) -> Tensor:
    """ArcFace additive angular margin ``cos(theta_y + m)`` (ArcFace, Deng et al. 2019).

    Where ``theta_y + m > pi`` the cosine would stop decreasing in ``theta_y``; there we use the
    original ArcFace fallback ``cos(theta_y) - m * sin(m)`` (the "threshold" variant: the switch
    happens at ``cos(theta_y) = cos(pi - m)``), which keeps the target logit monotonic and continuous.
    """
    cos_t = cos_target.clamp(-1 + _COS_EPS, 1 - _COS_EPS)
    sin_t = torch.sqrt(1.0 - cos_t * cos_t)
    with_margin = cos_t * math.cos(m) - sin_t * math.sin(m)  # cos(theta + m) by the angle-sum identity
    fallback = cos_t - m * math.sin(m)
    return torch.where(cos_t > math.cos(math.pi - m), with_margin, fallback)


def cosface_target(cos_target: Tensor, m: float) -> Tensor:
    """CosFace additive cosine margin ``cos(theta_y) - m`` (CosFace, Wang et al. 2018)."""
    return cos_target - m


def adaface_margin_scaler(norms: Tensor, mean: Tensor, std: Tensor, h: float, eps: float) -> Tensor:
    """AdaFace feature-norm quality ``n = clip(h * (norm - mu) / (sigma + eps), -1, 1)`` (AdaFace, Kim et al. 2022)."""
    return torch.clip(h * (norms - mean) / (std + eps), -1.0, 1.0)


def adaface_target(cos_target: Tensor, scaler: Tensor, m: float, eps: float) -> Tensor:
    """AdaFace target ``cos(clip(theta_y + g_angle, eps, pi - eps)) - g_add`` with
    ``g_angle = -m * n`` and ``g_add = m + m * n`` (AdaFace, Kim et al. 2022)."""
    theta = torch.acos(cos_target.clamp(-1 + eps, 1 - eps))
    g_angle = -m * scaler
    g_add = m + m * scaler
    return torch.cos(torch.clip(theta + g_angle, eps, math.pi - eps)) - g_add


def _check_inputs(cosine: Tensor, labels: Tensor, norms: Tensor | None) -> None:
    if cosine.ndim != 2:
        raise ValueError(f"margin: cosine must be [B, C], got shape {tuple(cosine.shape)}")
    if labels.ndim != 1 or labels.shape[0] != cosine.shape[0]:
        raise ValueError(f"margin: labels must be [B={cosine.shape[0]}], got shape {tuple(labels.shape)}")
    if labels.dtype != torch.long:
        raise ValueError(f"margin: labels must be int64 (long), got {labels.dtype}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= cosine.shape[1]:
            bad = lo if lo < -1 else hi
            raise ValueError(
                f"margin: label {bad} outside [-1, {cosine.shape[1]}) (-1 = target not in these columns)"
            )
    if norms is not None and tuple(norms.shape) != (cosine.shape[0],):
        raise ValueError(f"margin: norms must be [B={cosine.shape[0]}], got shape {tuple(norms.shape)}")


class Margin(nn.Module):
    """Base class: scales all cosines by ``scale`` and replaces each row's target by :meth:`target_cosine`."""

    uses_norms = False

    def __init__(self, scale: float) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"margin scale s must be positive, got {scale}")
        self.scale = float(scale)

    def target_cosine(self, cos_target: Tensor, norms_target: Tensor | None) -> Tensor:
        """Margin-adjusted (unscaled) target cosine for the rows that have a target here."""
        raise NotImplementedError

    def forward(self, cosine: Tensor, labels: Tensor, norms: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]``; see the module docstring for the meaning of ``labels == -1`` and ``norms``."""
        _check_inputs(cosine, labels, norms)
        rows = torch.nonzero(labels >= 0).squeeze(1)
        cols = labels[rows]
        norms_target = None if norms is None else norms[rows]
        new_target = self.target_cosine(cosine[rows, cols], norms_target)
        logits = cosine.index_put((rows, cols), new_target.to(cosine.dtype))
        return logits * self.scale

    def extra_repr(self) -> str:
        fields = {k: v for k, v in vars(self).items() if type(v) is float}
        return ", ".join(f"{k}={v}" for k, v in fields.items())


class ArcFace(Margin):
    """ArcFace: target logit ``s * cos(theta_y + m)`` (see :func:`arcface_target` for ``theta_y + m > pi``)."""

    def __init__(self, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__(scale)
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFace margin m must be in [0, pi/2), got {margin}")
        self.margin = float(margin)

    def target_cosine(self, cos_target: Tensor, norms_target: Tensor | None) -> Tensor:
        return arcface_target(cos_target, self.margin)


class CosFace(Margin):
    """CosFace: target logit ``s * (cos(theta_y) - m)``."""

    def __init__(self, scale: float = 64.0, margin: float = 0.4) -> None:
        super().__init__(scale)
        self.margin = float(margin)

    def target_cosine(self, cos_target: Tensor, norms_target: Tensor | None) -> Tensor:
        return cosface_target(cos_target, self.margin)


class AdaFace(Margin):
    """AdaFace: quality-adaptive margin driven by the feature norm.

    Norms are clipped to ``[0.001, 100]`` and detached. In training mode each forward first updates the EMA buffers
    ``batch_mean`` / ``batch_std`` (initialised 20 and 100) with the mean and the unbiased std of the
    batch's finite norms (``new = t_alpha * batch + (1 - t_alpha) * old``; skipped when fewer than two
    finite norms), then uses the updated statistics for :func:`adaface_margin_scaler`.
    """

    uses_norms = True

    def __init__(
        self, scale: float = 64.0, margin: float = 0.4, h: float = 0.333, t_alpha: float = 0.01, eps: float = 1e-3
    ) -> None:
        super().__init__(scale)
        if not 0 < t_alpha <= 1:
            raise ValueError(f"AdaFace t_alpha must be in (0, 1], got {t_alpha}")
        self.margin, self.h, self.t_alpha, self.eps = float(margin), float(h), float(t_alpha), float(eps)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    @torch.no_grad()
    def update_statistics(self, safe_norms: Tensor) -> None:
        """EMA update of ``batch_mean``/``batch_std`` from the finite entries of ``safe_norms``."""
        finite = safe_norms[torch.isfinite(safe_norms)].to(self.batch_mean.dtype)
        if finite.numel() < 2:
            return
        a = self.t_alpha
        self.batch_mean.copy_(a * finite.mean() + (1 - a) * self.batch_mean)
        self.batch_std.copy_(a * finite.std() + (1 - a) * self.batch_std)

    def forward(self, cosine: Tensor, labels: Tensor, norms: Tensor | None = None) -> Tensor:
        if norms is None:
            raise ValueError("AdaFace needs the feature norms of the embeddings (norms=[B]), got None")
        safe = torch.clip(norms.detach(), 0.001, 100.0)
        if self.training:
            self.update_statistics(safe)
        return super().forward(cosine, labels, safe)

    def target_cosine(self, cos_target: Tensor, norms_target: Tensor | None) -> Tensor:
        scaler = adaface_margin_scaler(norms_target, self.batch_mean, self.batch_std, self.h, self.eps)
        scaler = torch.nan_to_num(scaler, nan=0.0)  # rows without a norm: neutral quality
        return adaface_target(cos_target, scaler.to(cos_target.dtype), self.margin, self.eps)


MARGINS: dict[str, type[Margin]] = {"arcface": ArcFace, "cosface": CosFace, "adaface": AdaFace}


def build_margin(name: str, **kwargs: float) -> Margin:
    """Margin by name (``arcface``, ``cosface``, ``adaface``; case-insensitive) with keyword hyperparameters."""
    key = str(name).lower()
    if key not in MARGINS:
        raise ValueError(f"unknown margin {name!r}; valid: {sorted(MARGINS)}")
    cls = MARGINS[key]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for margin {key!r}; valid: {valid}")
    return cls(**kwargs)
