"""The FR network trained by ``train_fr``: backbone + optional CR-FIQA quality head, and its
world-size-independent training checkpoint (safetensors for weights, JSON for counters, torch.save
only for optimizer state, always read back with ``weights_only=True``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fr.backbones import build_backbone
from fr.crfiqa import QualityHead
from fr.heads import ClassifierHead

NET_FILE, HEAD_FILE, OPTIM_FILE, STATE_FILE = "net.safetensors", "head.safetensors", "optimizer.pt", "state.json"
MOMENTUM_PREFIX = "momentum."  # head SGD momentum, one full tensor per head parameter
LEGACY_MOMENTUM_KEY = "momentum"  # checkpoints before the head interface: the weight's momentum


class FRNet(nn.Module):
    """Backbone (+ quality regressor). ``forward`` returns (embedding, predicted CR or None).

    ``quality_backbone_grad``: whether the CR-FIQA regression loss also trains the backbone (as in
    CR-FIQA) or only the regressor, on detached embeddings. Joint training from scratch stalled the
    small toy models (docs/results_toy.md), so the detached probe is the default.
    """

    def __init__(self, backbone: nn.Module, embedding_size: int, crfiqa: bool, quality_backbone_grad: bool = False):
        super().__init__()
        self.backbone = backbone
        self.quality = QualityHead(embedding_size) if crfiqa else None
        self.quality_backbone_grad = quality_backbone_grad

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = self.backbone(x)
        if self.quality is None:
            return emb, None
        q_in = emb.float() if self.quality_backbone_grad else emb.detach().float()
        return emb, self.quality(q_in)


def build_fr_net(backbone: str, embedding_size: int, crfiqa: bool, backbone_kwargs: dict | None = None,
                 quality_backbone_grad: bool = False) -> FRNet:
    return FRNet(build_backbone(backbone, embedding_size, **(backbone_kwargs or {})), embedding_size, crfiqa,
                 quality_backbone_grad)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def head_momentum(head: ClassifierHead, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Collective: the full SGD momentum of every head parameter (zeros before the first step)."""
    out = {}
    for name, param in head.named_parameters():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        out[MOMENTUM_PREFIX + name] = head.gather_param(name, buf if buf is not None else torch.zeros_like(param))
    return out


def load_head_momentum(head: ClassifierHead, optimizer: torch.optim.Optimizer, saved: dict[str, torch.Tensor]) -> None:
    """Put this rank's part of each saved full momentum back into ``optimizer``."""
    for name, param in head.named_parameters():
        full = saved.get(MOMENTUM_PREFIX + name)
        if full is None and name == "weight":
            full = saved.get(LEGACY_MOMENTUM_KEY)
        if full is not None:
            optimizer.state[param]["momentum_buffer"] = head.local_param(name, full).to(param.device)


def save_fr_checkpoint(directory: str | Path, net: nn.Module, head: ClassifierHead,
                       net_optimizer: torch.optim.Optimizer, head_optimizer: torch.optim.Optimizer,
                       state: dict[str, Any], write: bool) -> None:
    """Collective: every rank must call it (the head is gathered); only ``write=True`` ranks write files."""
    head_state = head.full_state_dict()
    head_state.update(head_momentum(head, head_optimizer))
    if not write:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in _unwrap(net).state_dict().items()}, str(directory / NET_FILE))
    save_file({k: v.detach().cpu().contiguous() for k, v in head_state.items()}, str(directory / HEAD_FILE))
    torch.save(net_optimizer.state_dict(), directory / OPTIM_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1))


def load_fr_checkpoint(directory: str | Path, net: nn.Module, head: ClassifierHead,
                       net_optimizer: torch.optim.Optimizer | None, head_optimizer: torch.optim.Optimizer | None,
                       device: torch.device | str = "cpu") -> dict[str, Any]:
    """Restore what :func:`save_fr_checkpoint` wrote, at any world size. Returns the saved counters."""
    directory = Path(directory)
    for name in (NET_FILE, HEAD_FILE, STATE_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} lacks {name}")
    _unwrap(net).load_state_dict(load_file(str(directory / NET_FILE), device=str(device)), strict=True)
    head_state = load_file(str(directory / HEAD_FILE))
    momentum = {k: head_state.pop(k) for k in list(head_state)
                if k.startswith(MOMENTUM_PREFIX) or k == LEGACY_MOMENTUM_KEY}
    head.load_full_state_dict(head_state)
    if net_optimizer is not None and (directory / OPTIM_FILE).is_file():
        net_optimizer.load_state_dict(torch.load(directory / OPTIM_FILE, map_location=device, weights_only=True))
    if head_optimizer is not None:
        load_head_momentum(head, head_optimizer, momentum)
    return json.loads((directory / STATE_FILE).read_text())


def export_fr_model(checkpoint_dir: str | Path, net: FRNet, head: ClassifierHead, identities: list[str],
                    out_dir: str | Path, meta: dict[str, Any]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Backbone (+ CR-FIQA regressor) and the head's export (e.g. the prototype matrix) from a training
    checkpoint, as safetensors + JSON. ``net``/``head`` are freshly built single-process modules of the
    checkpoint's architecture. Returns (the written paths, the checkpoint's counters)."""
    from fr.backbones import save_backbone

    state = load_fr_checkpoint(checkpoint_dir, net, head, None, None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"backbone": save_backbone(net.backbone, out_dir / "backbone")}
    if net.quality is not None:
        save_file({k: v.contiguous() for k, v in net.quality.state_dict().items()}, str(out_dir / "quality.safetensors"))
        paths["quality"] = out_dir / "quality.safetensors"
    paths.update(head.export(out_dir, identities, {"step": state["step"], **meta}))
    return paths, state
