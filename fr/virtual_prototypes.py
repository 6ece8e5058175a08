"""VIGFace virtual prototypes (stage 1, §3.1, eq. 3-5).

The classifier weight is ``W = [W_real (n rows); W_virtual (k rows)]``. Virtual identities have no
images, so each step feeds the head ``b_v`` virtual embeddings, each a unit-norm virtual prototype plus
isotropic Gaussian noise whose scale ``sigma`` tracks the spread of the real embeddings.

Choices where the paper's text leaves room (our copy of eq. 4 is not legible):

* ``sigma`` (eq. 4) is a scalar computed on the **L2-normalised, detached** real embeddings of the
  batch: ``sqrt(mean_d (1/b) sum_i (e_id - mean_i e_id)^2)``, the root-mean-square over dimensions of
  the per-dimension population std. Heads compare directions only, and the virtual embedding is built
  around the unit-norm prototype, so the spread is measured on the unit sphere to share its scale; an
  isotropic ``N(0, I) * sigma`` with this sigma has the same total variance as the real batch.
* EMA (eq. 5) as printed: ``sigma_t = alpha * sigma_batch + (1 - alpha) * sigma_{t-1}``, alpha 0.9;
  the first update takes the batch value.
* ``b_v = k * b_r / n`` is rounded half up, and is at least 1 when ``k > 0``.
* Virtual rows are drawn uniformly without replacement when ``b_v <= k``, with replacement otherwise.
* The virtual embedding uses the normalised prototype ``w_v / ||w_v||`` and is differentiable in it,
  so its gradient reaches ``W`` (through the embedding and through the logits) and never the backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def virtual_batch_size(b_r: int, n: int, k: int) -> int:
    """Number of virtual embeddings per step, ``b_v = k * b_r / n`` rounded half up (>= 1 when k > 0)."""
    if n <= 0 or k < 0 or b_r < 0:
        raise ValueError(f"virtual_batch_size: need n > 0, k >= 0, b_r >= 0; got b_r={b_r}, n={n}, k={k}")
    if k == 0:
        return 0
    return max(1, (2 * k * b_r + n) // (2 * n))  # VIGFace §3.1: b_v = k * b_r / n


def real_embedding_std(real_embeddings: Tensor) -> Tensor:
    """Scalar spread of the batch's real embeddings on the unit sphere, detached (VIGFace eq. 4).

    ``sqrt(mean_d var_d)`` with ``var_d`` the population (1/b) variance of dimension ``d`` of the
    L2-normalised embeddings.
    """
    if real_embeddings.ndim != 2 or real_embeddings.shape[0] < 1:
        raise ValueError(f"real_embedding_std: need embeddings [b>=1, d], got {tuple(real_embeddings.shape)}")
    unit = F.normalize(real_embeddings.detach().float(), dim=1)
    return unit.var(dim=0, unbiased=False).mean().sqrt()  # VIGFace eq. 4


def ema_sigma(previous: Tensor, batch_sigma: Tensor, alpha: float) -> Tensor:
    """``sigma_t = alpha * sigma_batch + (1 - alpha) * sigma_{t-1}`` (VIGFace eq. 5)."""
    return alpha * batch_sigma + (1.0 - alpha) * previous  # VIGFace eq. 5


def virtual_embeddings(unit_prototypes: Tensor, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """``w_v + N(0, I) * sigma`` given unit prototypes ``[b_v, d]`` and standard-normal noise (VIGFace eq. 3)."""
    return unit_prototypes + noise * sigma  # VIGFace eq. 3


class SigmaEMA(nn.Module):
    """Running ``sigma`` of the real embeddings (eq. 4 per batch, smoothed by eq. 5); a buffer, saved with the head."""

    def __init__(self, alpha: float = 0.9) -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"SigmaEMA alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.register_buffer("sigma", torch.tensor(0.0))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, real_embeddings: Tensor) -> Tensor:
        """Fold this batch's ``sigma`` into the running value and return it (detached)."""
        batch_sigma = real_embedding_std(real_embeddings).to(self.sigma)
        new = batch_sigma if int(self.steps) == 0 else ema_sigma(self.sigma, batch_sigma, self.alpha)
        self.sigma.copy_(new)
        self.steps += 1
        return self.sigma.clone()


def draw_virtual_sample(
    num_virtual: int, count: int, dim: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Random virtual rows and standard-normal noise ``([count] long, [count, dim] float32)``, both on CPU.

    Indices first, then noise, from one generator: the sharded head replays the same draw on every rank.
    """
    if count < 0 or (count > 0 and num_virtual <= 0):
        raise ValueError(f"cannot draw {count} virtual embeddings from {num_virtual} virtual prototypes")
    if count <= num_virtual:
        indices = torch.randperm(num_virtual, generator=generator)[:count]
    else:
        indices = torch.randint(num_virtual, (count,), generator=generator)
    noise = torch.randn((count, dim), generator=generator)
    return indices, noise


def sample_virtual_embeddings(
    w_virtual: Tensor, sigma: Tensor | float, count: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``count`` virtual embeddings around randomly chosen rows of ``w_virtual [k, d]`` (eq. 3).

    Returns ``(embeddings [count, d], virtual_indices [count])``; the embeddings are differentiable in
    ``w_virtual`` only (``sigma`` must come detached, e.g. from :class:`SigmaEMA`).
    """
    if w_virtual.ndim != 2:
        raise ValueError(f"w_virtual must be [k, d], got shape {tuple(w_virtual.shape)}")
    indices, noise = draw_virtual_sample(w_virtual.shape[0], count, w_virtual.shape[1], generator)
    indices = indices.to(w_virtual.device)
    unit = F.normalize(w_virtual[indices], dim=1)
    return virtual_embeddings(unit, sigma, noise.to(unit)), indices
