"""IR-SE backbones (ResNet-IR with squeeze-excitation), as used by AdaFace and TFace.

Module names follow AdaFace's ``net.py`` (``Backbone(..., mode="ir_se")``) so its IR-SE-50
weights load with ``strict=True`` once the Lightning ``"model."`` prefix is stripped:
``input_layer.{0,1,2}`` (conv3x3, BN, PReLU), ``body.<i>.res_layer.{0..5}`` (BN, conv3x3, BN,
PReLU, conv3x3 strided, BN) + ``res_layer.se_block.{fc1,fc2}``, ``body.<i>.shortcut_layer.{0,1}``
(1x1 conv + BN) where the channel count changes, else a parameter-free subsampling, and
``output_layer.{0,3,4}`` (BN2d, Linear(512*7*7 -> 512), BatchNorm1d without affine).

Note: AdaFace's own forward L2-normalises and returns ``(embedding, norm)``, and its released
models expect BGR input; this module returns the raw embedding like :class:`fr.iresnet.IResNet`.
"""
from __future__ import annotations

import torch
from torch import nn

from fr.iresnet import FaceBackbone, StagePlan, embedding_layers, projection_shortcut, residual_branch, stem

IRSE_LAYERS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
"""Blocks per stage of the IR-SE depths in AdaFace/TFace."""

SE_REDUCTION = 16


class SEModule(nn.Module):
    """Squeeze-excitation with bias-free 1x1 convs ``fc1``/``fc2`` (AdaFace key layout).

    Not ``torchvision.ops.SqueezeExcitation``: its convs carry biases, so checkpoint keys would differ.
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)  # max(): tiny test widths below 16 channels
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(gate))))
        return x * gate


class BasicBlockIRSE(nn.Module):
    """IR residual branch + SE gate, plus a shortcut (projection, strided subsampling, or identity)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.res_layer = nn.Sequential(*residual_branch(in_ch, out_ch, stride))
        self.res_layer.add_module("se_block", SEModule(out_ch))
        if in_ch != out_ch:
            self.shortcut_layer: nn.Module = projection_shortcut(in_ch, out_ch, stride)
        elif stride != 1:
            self.shortcut_layer = nn.MaxPool2d(kernel_size=1, stride=stride)  # picks every stride-th pixel
        else:
            self.shortcut_layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE(FaceBackbone):
    """IR-SE network: ``input_layer`` -> ``body`` (flat sequence of blocks) -> ``output_layer``.

    Arguments: see :class:`fr.iresnet.FaceBackbone`; dropout defaults to 0.4 as in AdaFace/TFace.
    """

    default_dropout = 0.4

    def _build(self, plan: StagePlan, dropout: float) -> None:
        self.input_layer = nn.Sequential(*stem(plan[0][0][0]))
        self.body = nn.Sequential(*(BasicBlockIRSE(*spec) for stage in plan for spec in stage))
        self.output_layer = nn.Sequential(
            *embedding_layers(plan[-1][-1][1], self.side, self.embedding_size, dropout, affine=False)
        )
        # AdaFace's initialisation: Kaiming-normal (fan_out) convs and linears, zero biases.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_layer(x))

    def _output_layers(self) -> list[nn.Module]:
        return list(self.output_layer)

