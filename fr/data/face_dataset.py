"""A torch Dataset over face shards, and the batch decoder shared with the Ray Data reader.

Both paths call :func:`decode_batch`, so the torch Dataset and the Ray Data reader yield identical
samples. Undecodable images are skipped and counted (never crash a long job).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fr.data.images import decode_image, to_model_input
from fr.data.shards import list_shards, read_table

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def decode_batch(images: list[bytes], labels: np.ndarray, image_size: int = 112,
                 augment: Augment | None = None, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode encoded faces -> (uint8 [B,H,W,3], labels [B], number skipped as undecodable/wrong size)."""
    out, keep = [], []
    for i, data in enumerate(images):
        try:
            rgb = decode_image(data)
        except ValueError:
            continue
        if rgb.shape[:2] != (image_size, image_size):
            continue
        if augment is not None:
            rgb = augment(rgb, rng if rng is not None else np.random.default_rng())
        out.append(rgb)
        keep.append(i)
    labels = np.asarray(labels, dtype=np.int64)[keep]
    arr = np.stack(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)
    return arr, labels, len(images) - len(keep)


class FaceShardDataset(Dataset):
    """Map-style dataset of (image tensor [3,H,W] normalised (x-127.5)/128, label) over all shards.

    Shards are memory-mapped; the encoded bytes are decoded lazily per item. An undecodable record
    raises in ``__getitem__`` only if ``skip_corrupt`` is False; otherwise the next valid record is used
    and ``num_skipped`` counts it.
    """

    def __init__(self, directory: str | Path, image_size: int = 112, augment: Augment | None = None,
                 seed: int = 0, skip_corrupt: bool = True):
        self.paths = list_shards(directory)
        self.tables = [read_table(p) for p in self.paths]
        sizes = np.array([t.num_rows for t in self.tables], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        self.labels = np.concatenate([t.column("label").to_numpy() for t in self.tables])

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness is a function of (seed, epoch, index): new draws every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def record(self, index: int) -> dict:
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        row = index - int(self.offsets[shard])
        table = self.tables[shard]
        return {name: table.column(name)[row].as_py() for name in table.column_names}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        for attempt in range(n):
            idx = (index + attempt) % n
            rec = self.record(idx)
            rng = np.random.default_rng([self.seed, self.epoch, idx]) if self.augment is not None else None
            arr, labels, skipped = decode_batch([rec["image"]], np.array([rec["label"]]), self.image_size,
                                                self.augment, rng)
            if not skipped:
                return to_model_input(arr)[0], int(labels[0])
            self.num_skipped += 1
            if not self.skip_corrupt:
                raise ValueError(f"{self.paths[int(np.searchsorted(self.offsets, idx, side='right') - 1)]}: "
                                 f"record {idx} is not a decodable {self.image_size}px face")
        raise ValueError("no decodable records in the dataset")
