"""Ray Data reader for face shards (training ingestion). Decoding is fr.data.face_dataset.decode_batch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray

from fr.data.face_dataset import Augment, decode_batch
from fr.data.images import to_model_input
from fr.data.shards import list_shards


class _DecodeFaces:
    """Callable for ``map_batches``: encoded bytes -> normalised float32 images [B,3,H,W] + labels."""

    def __init__(self, image_size: int, augment: Augment | None, seed: int):
        self.image_size = image_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        # undecodable records are dropped here (ingestion already skipped and counted them)
        arr, labels, _ = decode_batch(list(batch["image"]), batch["label"], self.image_size,
                                      self.augment, self.rng)
        return {"image": to_model_input(arr).numpy(), "label": labels}


def read_face_shards(directory: str | Path, image_size: int = 112, augment: Augment | None = None,
                     seed: int = 0, num_cpus: float = 0.25, batch_size: int = 256,
                     shuffle_files: bool = False) -> ray.data.Dataset:
    """Dataset of {"image": float32 [3,H,W] normalised (x-127.5)/128, "label": int64} rows."""
    paths = [str(p) for p in list_shards(directory)]
    ds = ray.data.read_parquet(paths, columns=["image", "label"], num_cpus=num_cpus,
                               shuffle="files" if shuffle_files else None)
    return ds.map_batches(_DecodeFaces(image_size, augment, seed), batch_format="numpy",
                        batch_size=batch_size, num_cpus=num_cpus)
