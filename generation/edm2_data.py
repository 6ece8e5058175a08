"""D_orig for the EDM2 model: face shards as ``[-1, 1]`` tensors at the model's size, with labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fr.data.face_dataset import FaceShardDataset


def hflip(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 1/2 (a face's mirror image is a face of the same identity)."""
    return rgb[:, ::-1].copy() if rng.random() < 0.5 else rgb


def to_model_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average ``[B, 3, S, S]`` faces down to ``size`` (as is if equal); bilinear if larger."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] > size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class EDM2FaceData(torch.utils.data.Dataset):
    """(image ``[3, s, s]`` in about [-1, 1] (the shards' ``(x - 127.5)/128``), label) for a model of side ``s``."""

    def __init__(self, directory: str | Path, image_size: int, model_size: int, flip: bool = True, seed: int = 0):
        self.faces = FaceShardDataset(directory, image_size=image_size, augment=hflip if flip else None, seed=seed)
        self.model_size = int(model_size)

    def set_epoch(self, epoch: int) -> None:
        self.faces.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, label = self.faces[index]
        return to_model_size(x[None], self.model_size)[0], label

    @property
    def num_skipped(self) -> int:
        return self.faces.num_skipped
