"""IResNet face-recognition backbones with insightface ``arcface_torch`` state_dict keys.

Module names and tensor shapes follow ``recognition/arcface_torch/backbones/iresnet.py`` so the
public ``backbone.pth`` checkpoints (r18/r34/r50/r100/r200) load with ``strict=True``.
Input: (B, 3, 112, 112) RGB normalised as ``(x - 127.5) / 128``; output: the raw (not
L2-normalised) 512-d embedding.

Stem: 3x3 conv (stride 1) + BN + PReLU. Each stage starts with a stride-2 block, so a 112 input
ends at 7x7. Block (pre-activation "improved" residual): BN, 3x3 conv, BN, PReLU, 3x3 conv
(stride here), BN, plus a 1x1-conv + BN shortcut where the shape changes. Output: BN2d, dropout,
flatten, Linear(C*7*7 -> 512), BatchNorm1d (its weight fixed at 1, as in insightface).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
"""Blocks per stage for each insightface IResNet depth."""

BN_EPS = 1e-5
NUM_STAGES = 4
STAGE_STRIDE = 2  # every stage halves the resolution: 112 -> 56 -> 28 -> 14 -> 7


def stage_widths(base_width: int) -> tuple[int, ...]:
    """Channels of the four stages: base, 2*base, 4*base, 8*base (64..512 for the full models)."""
    if int(base_width) != base_width or base_width < 1:
        raise ValueError(f"base_width must be a positive integer, got {base_width!r}")
    return tuple(int(base_width) * 2**i for i in range(NUM_STAGES))


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    """Validate blocks-per-stage: four positive integers."""
    out = tuple(layers)
    if len(out) != NUM_STAGES or any(int(n) != n or n < 1 for n in out):
        raise ValueError(f"layers must be {NUM_STAGES} positive integers (blocks per stage), got {layers!r}")
    return tuple(int(n) for n in out)


StagePlan = list[list[tuple[int, int, int]]]
"""Per stage, the ``(in_channels, out_channels, stride)`` of each block."""


def stage_plan(layers: Sequence[int], base_width: int) -> StagePlan:
    """Per stage, the ``(in_channels, out_channels, stride)`` of each block; each stage's first block has stride 2."""
    layers = check_layers(layers)
    widths = stage_widths(base_width)
    plan, in_ch = [], widths[0]
    for blocks, width in zip(layers, widths):
        plan.append([(in_ch, width, STAGE_STRIDE)] + [(width, width, 1)] * (blocks - 1))
        in_ch = width
    return plan


def feature_side(input_size: int) -> int:
    """Side of the last feature map for a square ``input_size`` input (7 for 112)."""
    reduction = STAGE_STRIDE**NUM_STAGES
    if int(input_size) != input_size or input_size < reduction or input_size % reduction:
        raise ValueError(f"input_size must be a positive multiple of {reduction}, got {input_size!r}")
    return int(input_size) // reduction


def check_input(x: torch.Tensor, input_size: int, where: str) -> None:
    """Raise ValueError unless ``x`` is a (B, 3, input_size, input_size) float batch."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    expected = (3, input_size, input_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"{where}: expected input of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{where}: expected a floating-point image batch, got dtype {x.dtype}")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def residual_branch(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    """The IR residual branch: BN, conv3x3, BN, PReLU, conv3x3 (strided), BN.

    Shared by IResNet (named attributes) and IR-SE (an ``nn.Sequential``), whose checkpoints name
    the same layers differently.
    """
    return [
        nn.BatchNorm2d(in_ch, eps=BN_EPS),
        conv3x3(in_ch, out_ch),
        nn.BatchNorm2d(out_ch, eps=BN_EPS),
        nn.PReLU(out_ch),
        conv3x3(out_ch, out_ch, stride),
        nn.BatchNorm2d(out_ch, eps=BN_EPS),
    ]


def projection_shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Shortcut where the shape changes: 1x1 conv (strided, no bias) + BN."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_ch, eps=BN_EPS),
    )


def stem(width: int) -> list[nn.Module]:
    """Input layer: conv3x3(3 -> width, stride 1), BN, PReLU."""
    return [conv3x3(3, width), nn.BatchNorm2d(width, eps=BN_EPS), nn.PReLU(width)]


def embedding_layers(
    channels: int, side: int, embedding_size: int, dropout: float, affine: bool
) -> list[nn.Module]:
    """Output layer: BN2d, Dropout, Flatten, Linear(channels*side*side -> embedding), BatchNorm1d."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if int(embedding_size) != embedding_size or embedding_size < 1:
        raise ValueError(f"embedding_size must be a positive integer, got {embedding_size!r}")
    return [
        nn.BatchNorm2d(channels, eps=BN_EPS),
        nn.Dropout(p=dropout),
        nn.Flatten(1),
        nn.Linear(channels * side * side, int(embedding_size)),
        nn.BatchNorm1d(int(embedding_size), eps=BN_EPS, affine=affine),
    ]


class IBasicBlock(nn.Module):
    """One IResNet block; attribute names match insightface (bn1, conv1, bn2, prelu, conv2, bn3, downsample)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1, self.bn2, self.prelu, self.conv2, self.bn3 = residual_branch(in_ch, out_ch, stride)
        needs_projection = stride != 1 or in_ch != out_ch
        self.downsample = projection_shortcut(in_ch, out_ch, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _trunk_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Autocast for the ``fp16`` option: fp16 on CUDA, bf16 elsewhere; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


class FaceBackbone(nn.Module):
    """Shared construction and forward of the IR backbones: trunk -> feature map -> output layers -> embedding.

    Args:
        layers: blocks per stage, e.g. ``IRESNET_LAYERS[100]``.
        embedding_size: output dimension (512 in all public checkpoints).
        base_width: channels of stage 1 (64 for the public models; small values for CPU tests).
        dropout: dropout in the output layer; ``None`` takes the family's ``default_dropout``.
        fp16: run the convolutional trunk under autocast; the final Linear + BatchNorm1d stay fp32.
        input_size: square input side, a multiple of 16 (112 for the public models).
        auto_resize: accept square inputs of any side and resize them (bilinear, antialiased) to
            ``input_size`` first, e.g. 112px shards into a cheap 48px CPU model.

    Subclasses implement ``_build`` (create the modules from the stage plan), ``_trunk`` and
    ``_output_layers`` (the five modules built by :func:`embedding_layers`).
    """

    default_dropout = 0.0

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        base_width: int = 64,
        dropout: float | None = None,
        fp16: bool = False,
        input_size: int = 112,
        auto_resize: bool = False,
    ) -> None:
        super().__init__()
        self.auto_resize = bool(auto_resize)
        self.side = feature_side(input_size)
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        self.fp16 = bool(fp16)
        self._build(stage_plan(layers, base_width), self.default_dropout if dropout is None else float(dropout))

    def _build(self, plan: StagePlan, dropout: float) -> None:
        raise NotImplementedError

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _output_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(embedding [B, E], feature_map [B, C, s, s])``.

        The feature map is the last stage's output, before the output BN (s = input_size / 16).
        With ``fp16`` the trunk runs under autocast (fp16 on CUDA, bf16 elsewhere) and the
        Linear + BatchNorm1d run in fp32, as in insightface.
        """
        if self.auto_resize and x.ndim == 4 and x.shape[-1] == x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        check_input(x, self.input_size, type(self).__name__)
        bn, dropout, flatten, linear, bn1d = self._output_layers()
        with _trunk_autocast(x.device, self.fp16):
            fmap = self._trunk(x)
            flat = flatten(dropout(bn(fmap)))
        embedding = bn1d(linear(flat.float()))
        return embedding, fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw embedding [B, embedding_size] (not L2-normalised)."""
        return self.forward_features(x)[0]


class IResNet(FaceBackbone):
    """insightface-compatible IResNet (arguments: see :class:`FaceBackbone`; dropout default 0 as in insightface)."""

    default_dropout = 0.0

    def _build(self, plan: StagePlan, dropout: float) -> None:
        self.conv1, self.bn1, self.prelu = stem(plan[0][0][0])
        for index, stage in enumerate(plan, start=1):
            setattr(self, f"layer{index}", nn.Sequential(*(IBasicBlock(*spec) for spec in stage)))
        self.bn2, self.dropout, self.flatten, self.fc, self.features = embedding_layers(
            plan[-1][-1][1], self.side, self.embedding_size, dropout, affine=True
        )
        # Same scheme as insightface: conv N(0, 0.1) (BN already starts at scale 1, shift 0);
        # the embedding BN's scale is fixed at 1.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
        self.features.weight.requires_grad_(False)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def _output_layers(self) -> list[nn.Module]:
        return [self.bn2, self.dropout, self.flatten, self.fc, self.features]

