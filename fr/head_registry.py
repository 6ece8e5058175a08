"""Classifier heads by name: the one table ``train_fr`` builds its head from.

A head kind is a factory ``(HeadSpec) -> ClassifierHead`` named as ``"module:function"`` and imported
only when used, so adding a head (e.g. GIF's token head) is one new class and one line in
:data:`HEADS`; no job changes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fr.heads import ClassifierHead, FullMarginHead


@dataclass
class HeadSpec:
    """Everything a head factory may need: sizes, the margin, the training set's identities and options."""

    num_classes: int  # real classes of the training set
    embedding_size: int
    margin: nn.Module
    num_virtual: int = 0
    sample_rate: float = 1.0
    seed: int = 0
    world_size: int = 1
    identities: list[str] = field(default_factory=list)  # label -> identity of the training set
    options: dict[str, Any] = field(default_factory=dict)  # train_fr.head_kwargs (+ codes)


def build_softmax_head(spec: HeadSpec) -> ClassifierHead:
    """The full softmax margin head (all classes on one device); single worker only."""
    if spec.world_size != 1:
        raise ValueError(f"train_fr.head=softmax keeps every class on one device and is not synchronised across "
                         f"{spec.world_size} workers; use train_fr.head=partial_fc for several workers")
    _no_options("softmax", spec)
    return FullMarginHead(spec.num_classes, spec.num_virtual, spec.embedding_size, spec.margin, seed=spec.seed)


def build_partial_fc_head(spec: HeadSpec) -> ClassifierHead:
    """The sharded partial-FC margin head with VIGFace's virtual prototypes (any number of workers)."""
    from fr.partial_fc import PartialFCHead

    _no_options("partial_fc", spec)
    # embedding_grad_scale=world: DDP averages backbone gradients over ranks, the sharded loss is the
    # mean over the global batch, so scaling by the world size gives the true global-batch gradient.
    return PartialFCHead(spec.num_classes, spec.num_virtual, spec.embedding_size, spec.margin,
                         sample_rate=spec.sample_rate, seed=spec.seed, embedding_grad_scale=float(spec.world_size))


def _no_options(kind: str, spec: HeadSpec) -> None:
    if spec.options:
        raise ValueError(f"train_fr.head={kind} takes no head options, got {sorted(spec.options)}")


HEADS: dict[str, str] = {
    "gif": "fr.gif.token_head:build_gif_head",
    "partial_fc": "fr.head_registry:build_partial_fc_head",
    "softmax": "fr.head_registry:build_softmax_head",
}


def build_head(kind: str, spec: HeadSpec) -> ClassifierHead:
    """The head ``kind`` built from ``spec``: a name in :data:`HEADS` or an import path
    ``"package.module:factory"`` (a head of another package); ValueError listing the kinds for an unknown one."""
    if kind not in HEADS and ":" not in kind:
        raise ValueError(f"unknown train_fr.head {kind!r}; choose one of {sorted(HEADS)} (or 'module:factory')")
    module, function = HEADS.get(kind, kind).split(":")
    head = getattr(importlib.import_module(module), function)(spec)
    if not isinstance(head, ClassifierHead):
        raise TypeError(f"head factory {HEADS.get(kind, kind)} returned {type(head).__name__}, not a ClassifierHead")
    return head
