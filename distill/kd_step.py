"""SynthDistill's training iteration (Algorithm 1), plain torch.

Per iteration: (1) a fresh batch: ``z ~ N(0, I)``, ``w = M(z)``, ``I = G(w)``, ``e_T = F_T(I)``, one Adam step
on ``L_KD = MSE(F_S(I), e_T)`` (eq. 1); (2) for the dynamic modes, ``s = SIM(e_T, e_S)`` (eq. 2) from step
1's embeddings (computed before the update, detached), ``w' = w + c * s * n`` (eq. 3; in Z for
``dynamic_z``), ``I' = G(w')``, a second Adam step. ``static`` makes one step per iteration and
``static_2x`` two fresh-batch steps (as many images as the dynamic modes).

The student sees generated images and teacher embeddings only: the iteration has no label and no real
image among its inputs. The teacher is a black box (no gradient reaches or leaves it).

Step 1's images may come precomputed (``Step1Batch.images`` / ``e_teacher``, made by
:class:`distill.step1_maker.Step1Maker` in a Ray Data stream) or be generated here from ``z``; the
re-sampling always needs the generator in this process (it depends on this batch's student output).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.latent_generator import LatentGenerator, seeded_generator
from distill.resampling import agreement, check_mode, resampled_w
from distill.teachers import Teacher
from fr.training import NonFiniteGuard


@dataclass
class Step1Batch:
    """One fresh batch: its latents ``z`` and, when a data stream made them, its images and teacher embeddings.
    ``z2`` (and, streamed, ``images2``/``e_teacher2``): the second fresh batch of ``static_2x``.
    ``noise_seed``: the re-sampling noise of this batch."""

    z: torch.Tensor
    noise_seed: int
    images: torch.Tensor | None = None
    e_teacher: torch.Tensor | None = None
    z2: torch.Tensor | None = None
    images2: torch.Tensor | None = None
    e_teacher2: torch.Tensor | None = None


def kd_loss(e_student: torch.Tensor, e_teacher: torch.Tensor) -> torch.Tensor:
    """L_KD = MSE of the raw student and teacher embeddings (eq. 1; the mean over rows and entries)."""
    return F.mse_loss(e_student.float(), e_teacher.detach().float())


class KDStep:
    """``__call__(batch) -> metrics`` runs one iteration of Algorithm 1 on ``student`` (a module, DDP-wrapped
    or not). ``on_latents(tag, z, w)`` (optional) is called with the latents of every synthesised batch."""

    def __init__(self, student: torch.nn.Module, teacher: Teacher, generator: LatentGenerator,
                 optimizer: torch.optim.Optimizer, mode: str, c: float, device: torch.device | str = "cpu",
                 max_nonfinite: int = 5, on_latents=None):
        self.student, self.teacher, self.generator, self.optimizer = student, teacher, generator, optimizer
        self.mode, self.c = check_mode(mode), float(c)
        self.device = torch.device(device)
        self.guard = NonFiniteGuard(max_nonfinite)
        self.on_latents = on_latents
        self.times = {"generate_s": 0.0, "teacher_s": 0.0, "student_s": 0.0}
        self.last_agreement: torch.Tensor | None = None

    def _timed(self, key: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.times[key] += time.perf_counter() - t
        return out

    def _synthesize(self, tag: str, z: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
        if self.on_latents is not None:
            self.on_latents(tag, z, w)
        return self._timed("generate_s", self.generator.synthesize, w).to(self.device)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def _finite(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def train_on(self, images: torch.Tensor, e_teacher: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step on L_KD; returns (loss, the student's pre-update embeddings, detached)."""
        t = time.perf_counter()
        self.student.train()
        with self._autocast():
            e_student = self.student(images)
        loss = kd_loss(e_student, e_teacher)
        self.optimizer.zero_grad(set_to_none=True)
        if self.guard.check(self._finite(loss), step):
            loss.backward()
            self.optimizer.step()
        self.times["student_s"] += time.perf_counter() - t
        return loss.detach(), e_student.detach().float()

    def _fresh(self, tag: str, z: torch.Tensor, images=None, e_teacher=None):
        w = self.generator.to_w(z)
        if images is None:
            images = self._synthesize(tag, z, w)
        elif self.on_latents is not None:
            self.on_latents(tag, z, w)
        if e_teacher is None:
            e_teacher = self._timed("teacher_s", self.teacher, images.to(self.device))
        return w, images.to(self.device), e_teacher.to(self.device)

    def __call__(self, batch: Step1Batch, step: int = 0) -> dict[str, torch.Tensor]:
        z = batch.z.to(torch.float32)
        w, images, e_t = self._fresh("step1", z, batch.images, batch.e_teacher)
        loss1, e_s = self.train_on(images, e_t, step)  # e_s: the embeddings before this update
        s = agreement(e_t, e_s)
        self.last_agreement = s
        metrics = {"loss_step1": loss1, "cos_step1": (2 * s - 1).mean()}
        if self.mode == "static":
            metrics["loss"] = loss1
            return metrics
        if self.mode == "static_2x":
            if batch.z2 is None:
                raise ValueError("static_2x: the batch has no second fresh latent batch z2")
            _, images2, e_t2 = self._fresh("step2", batch.z2.to(torch.float32), batch.images2, batch.e_teacher2)
        else:
            w2, z2 = resampled_w(self.generator, self.mode, z, w, s.to(w.device), self.c,
                                 seeded_generator(batch.noise_seed))
            images2 = self._synthesize("step2", z2, w2)
            e_t2 = self._timed("teacher_s", self.teacher, images2)
        loss2, e_s2 = self.train_on(images2, e_t2, step)
        metrics.update(loss_step2=loss2, cos_step2=F.cosine_similarity(e_t2.float(), e_s2, dim=1).mean(),
                       loss=0.5 * (loss1 + loss2))
        return metrics

    def images_per_iteration(self, batch_size: int) -> int:
        return batch_size * (1 if self.mode == "static" else 2)
