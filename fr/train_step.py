"""The FR training step: backbone + classifier head (+ CR-FIQA quality loss) in plain PyTorch.

:class:`FRTrainStep` is the counterpart of ``generation.trainer_step.dit_train_step``: one call runs the
forward under autocast (bf16, or fp16 with a grad scaler, on CUDA; bf16 on a CPU with bf16 units when
``cpu_bf16`` is asked for: ``fr.training.autocast_dtype``), composes the loss, agrees with every
other rank whether it is finite (a MIN all-reduce, so all ranks skip or stop together), and steps both
optimizers with the backbone gradient clipped. Any :class:`fr.heads.ClassifierHead` plugs in; the job
around it (``ray_jobs.train_fr``) only wires it to Ray Train.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from fr.crfiqa import certainty_ratio, quality_loss
from fr.heads import ClassifierHead
from fr.training import NonFiniteGuard, all_ranks_finite, autocast_dtype, clip_and_step, set_lr

log = logging.getLogger(__name__)


class FRTrainStep:
    """One optimisation step of ``net`` (an ``fr.fr_model.FRNet``, possibly DDP-wrapped) and ``head``.

    ``__call__(images, labels, lr)`` returns the step's metrics (tensors are detached; the caller turns
    them into floats only when it logs) and raises ``fr.training.NonFiniteLossError`` after
    ``max_nonfinite`` non-finite losses in a row (skipping the ones before).
    """

    def __init__(self, net: nn.Module, head: ClassifierHead, net_optimizer: torch.optim.Optimizer,
                 head_optimizer: torch.optim.Optimizer, *, device: torch.device, crfiqa_weight: float = 10.0,
                 grad_clip: float = 5.0, amp: bool = True, max_nonfinite: int = 5, nonfinite_total: int = 0,
                 cpu_bf16: bool = False):
        inner = net.module if hasattr(net, "module") else net
        if getattr(inner, "quality", None) is not None and not head.provides_centres:
            raise ValueError(f"CR-FIQA needs class centres (ccs/nnccs); the {type(head).__name__} head has none: "
                             f"set train_fr.crfiqa=false")
        self.net, self.head, self.device = net, head, device
        self.optimizers = [net_optimizer, head_optimizer]
        self.crfiqa_weight, self.grad_clip = crfiqa_weight, grad_clip
        if device.type == "cuda":
            self.amp = amp
            self.amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        else:
            cpu_dtype = autocast_dtype(device, False, cpu_bf16)
            self.amp, self.amp_dtype = cpu_dtype is not None, cpu_dtype or torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.amp_dtype == torch.float16 else None  # CUDA fp16
        self.guard = NonFiniteGuard(max_nonfinite)
        self.guard.total = nonfinite_total
        self.backbone_params = list(net.parameters())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float, step: int) -> dict[str, Any]:
        set_lr(self.optimizers, lr)
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            emb, quality_pred = self.net(images)
        out = self.head(emb.float(), labels)
        loss, q_loss = out.loss, None
        if quality_pred is not None:
            q_loss = quality_loss(quality_pred, certainty_ratio(out.ccs, out.nnccs))
            loss = loss + self.crfiqa_weight * q_loss
        finite = all_ranks_finite(loss)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.guard.check(finite, step):  # raises NonFiniteLossError after max_nonfinite in a row
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            grad_norm = clip_and_step(self.backbone_params, self.optimizers, self.grad_clip, self.scaler)
        else:
            grad_norm = float("nan")
            log.warning("non-finite loss at step %d skipped", step)
        metrics = {"loss": out.loss.detach(), "lr": lr, "grad_norm": grad_norm,
                   "nonfinite_total": self.guard.total, "virtual_per_step": out.num_virtual_samples}
        if q_loss is not None:
            metrics["quality_loss"] = q_loss.detach()
        metrics.update({k: v.detach() if torch.is_tensor(v) else v for k, v in out.metrics.items()})
        return metrics
