"""Plain-PyTorch pieces of FR training: learning-rate schedules, the world-size-independent batch order,
the non-finite-loss guard and one optimisation step. Ray wiring lives in ``ray_jobs.train_fr``.
"""
from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def step_lr(base_lr: float, epoch: float, milestones: Sequence[float], gamma: float = 0.1) -> float:
    """Step schedule: ``base_lr * gamma^(number of milestones passed)`` (VIGFace stage 1: /10 at 24, 30, 36)."""
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


def warmup_poly_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int, power: float = 2.0) -> float:
    """Linear warm-up to ``base_lr`` then polynomial decay to 0 (arcface_torch's PolynomialLRWarmup)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * max(0.0, 1.0 - progress) ** power


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    kind: str  # "step" | "poly"
    steps_per_epoch: int
    total_steps: int
    milestones: tuple[float, ...] = ()
    warmup_steps: int = 0
    gamma: float = 0.1
    power: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in ("step", "poly"):
            raise ValueError(f"lr schedule must be 'step' or 'poly', got {self.kind!r}")
        if self.steps_per_epoch < 1 or self.total_steps < 1:
            raise ValueError(f"steps_per_epoch and total_steps must be >= 1, got {self.steps_per_epoch}, "
                             f"{self.total_steps}")

    def __call__(self, step: int) -> float:
        if self.kind == "step":
            return step_lr(self.base_lr, step / self.steps_per_epoch, self.milestones, self.gamma)
        return warmup_poly_lr(self.base_lr, step, self.total_steps, self.warmup_steps, self.power)


def set_lr(optimizers: Sequence[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


class GlobalBatchOrder:
    """The data order of a run: a fresh permutation per epoch, cut into global batches, each split into
    equal per-rank slices. The order depends on (seed, epoch, global batch size) only, so a run that
    resumes on another number of workers sees the same samples at the same step.
    """

    def __init__(self, num_samples: int, global_batch: int, world_size: int, rank: int, seed: int):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} does not divide across {world_size} workers")
        if num_samples < global_batch:
            raise ValueError(f"dataset has {num_samples} images, fewer than one batch of {global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = num_samples // global_batch  # the last partial batch is dropped

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[list[int]]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        for step in range(start_step, self.steps_per_epoch):
            batch = perm[step * self.global_batch:(step + 1) * self.global_batch]
            yield batch[self.rank * self.local_batch:(self.rank + 1) * self.local_batch].tolist()


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every rank (a MIN all-reduce when a process group is running)."""
    finite = torch.isfinite(loss.detach()).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips together
    return bool(finite.item())


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses."""


class NonFiniteGuard:
    """Counts non-finite losses; ``check`` says whether to skip the step, raises after ``limit`` in a row."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"non-finite limit must be >= 1, got {limit}")
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def check(self, finite: bool, step: int) -> bool:
        """Record whether this step's loss is finite: True to use the step, False to skip it."""
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"{self.consecutive} non-finite losses in a row (last at step {step}); stopping. "
                f"The last good checkpoint is kept; lower the learning rate or check the data.")
        return False


def clip_and_step(params: Sequence[nn.Parameter], optimizers: Sequence[torch.optim.Optimizer],
                  max_norm: float, scaler: torch.amp.GradScaler | None = None) -> float:
    """Unscale (AMP), clip the global gradient norm (0 = no clipping), step every optimizer."""
    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)
    grads = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else math.inf)
    for opt in optimizers:
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
    if scaler is not None:
        scaler.update()
    return float(norm)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 units: the ``avx512_bf16`` or ``amx_bf16`` flag in Linux's
    ``/proc/cpuinfo`` (torch has no public query: ``torch.backends.cpu`` reports only the vector level).
    False where the file is missing (another OS): bf16 then stays off rather than risk an emulated one."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def autocast_dtype(device: torch.device, gpu_bf16: bool, cpu_bf16: bool) -> torch.dtype | None:
    """The training forward's autocast dtype (None: fp32). bf16 on a GPU with ``gpu_bf16``; on the CPU with
    ``cpu_bf16`` where the CPU has bf16 units (oneDNN's bf16 kernels: 1.2-1.7x the fp32 step of the tiny
    models on an AVX512-BF16 core, ``bench/cpu_bf16.py``); without them bf16 is emulated and slower than
    fp32, so it stays fp32 with a warning. Weights, optimiser state and the loss stay fp32 either way."""
    if device.type == "cuda":
        return torch.bfloat16 if gpu_bf16 else None
    if device.type != "cpu" or not cpu_bf16:
        return None
    if not cpu_has_bf16():
        log.warning("cpu_bf16 is on but this CPU has no bf16 units (no avx512_bf16/amx_bf16 flag): training in fp32")
        return None
    return torch.bfloat16
