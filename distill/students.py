"""TinyFaR students (SynthDistill Table 1): a timm TinyNet trunk (``tinynet_a|b|c``, ``num_classes=0``,
1280-d pooled features) + ``Linear(1280, 512)``, input ``(x - 0.5) / 0.5`` on RGB in [0, 1].

No download: the trunk is randomly initialised (``pretrained=False``) or loaded from a local timm
checkpoint (safetensors, or a state_dict read with ``torch.load(weights_only=True)``). The authors start
from ImageNet weights (``pretrained=True``, a download), which a local checkpoint path replaces.
``input_size`` < 112 makes a smaller toy variant (faces resized inside ``forward``), named as such.
Exports are ``<prefix>.safetensors`` + ``<prefix>.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

VARIANTS = {"a": "tinynet_a", "b": "tinynet_b", "c": "tinynet_c"}
PAPER_TABLE1 = {"a": (254.3, 5.6), "b": (151.3, 3.1), "c": (76.8, 1.8)}  # MFLOPs, M params at 112 px
TRUNK_FEATURES = 1280


class StudentError(ValueError):
    """A student config or checkpoint does not fit."""


class TinyFaR(nn.Module):
    def __init__(self, variant: str = "c", embedding_size: int = 512, input_size: int = 112,
                 trunk_checkpoint: str | Path | None = None):
        super().__init__()
        import timm

        if variant not in VARIANTS:
            raise StudentError(f"distill.student: unknown TinyFaR variant {variant!r}; expected one of {sorted(VARIANTS)}")
        if input_size < 16:
            raise StudentError(f"distill.student_input_size must be >= 16, got {input_size}")
        self.variant, self.embedding_size, self.input_size = variant, int(embedding_size), int(input_size)
        self.trunk = timm.create_model(VARIANTS[variant], pretrained=False, num_classes=0)
        if trunk_checkpoint:
            _load_trunk(self.trunk, trunk_checkpoint)
        self.fc = nn.Linear(TRUNK_FEATURES, self.embedding_size)

    @property
    def name(self) -> str:
        return f"TinyFaR-{self.variant.upper()}" + ("" if self.input_size == 112 else f"@{self.input_size}px")

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Float RGB faces [B, 3, H, W] in [0, 1] -> raw embeddings [B, embedding_size]."""
        if x01.shape[-1] != self.input_size:
            x01 = F.interpolate(x01, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.fc(self.trunk((x01 - 0.5) / 0.5))

    def config(self) -> dict:
        return {"variant": self.variant, "embedding_size": self.embedding_size, "input_size": self.input_size}


def _load_trunk(trunk: nn.Module, path: str | Path) -> None:
    """A local timm checkpoint into the trunk; classifier keys are dropped (the trunk has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distill.student_checkpoint {path} not found")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StudentError(f"{path}: not a {type(trunk).__name__} checkpoint; missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def build_student(variant: str = "c", embedding_size: int = 512, input_size: int = 112,
                  trunk_checkpoint: str | Path | None = None) -> TinyFaR:
    return TinyFaR(variant, embedding_size, input_size, trunk_checkpoint)


def save_student(model: TinyFaR, prefix: str | Path, extra: dict | None = None) -> Path:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, f"{prefix}.safetensors")
    Path(f"{prefix}.json").write_text(json.dumps({"student": model.config(), **(extra or {})}, indent=2))
    return prefix


def load_student(prefix: str | Path, device: str | torch.device = "cpu") -> TinyFaR:
    prefix = Path(prefix)
    for p in (Path(f"{prefix}.json"), Path(f"{prefix}.safetensors")):
        if not p.is_file():
            raise FileNotFoundError(f"student export: missing {p}")
    model = TinyFaR(**json.loads(Path(f"{prefix}.json").read_text())["student"])
    missing, unexpected = model.load_state_dict(load_file(f"{prefix}.safetensors"), strict=False)
    if missing or unexpected:
        raise StudentError(f"{prefix}.safetensors does not fit {model.name}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model.to(device)


def complexity(model: nn.Module, input_size: int = 112) -> dict[str, float]:
    """MFLOPs of one forward on an ``input_size`` face (torch FlopCounterMode: a multiply-add is 2 FLOPs,
    the convention of the paper's Table 1, which these match at 112 px) and M params."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    model.train(was_training)
    flops = counter.get_total_flops()
    return {"mflops": flops / 1e6, "mparams": sum(p.numel() for p in model.parameters()) / 1e6}
