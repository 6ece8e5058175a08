"""A dataset with its evaluator embeddings, and the checks and helpers every dataset analysis shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.embed import Embeddings
from evaluation.report import shared_identities
from fr.data.shards import DatasetInfo, ShardError, list_shards, read_dataset_json


@dataclass
class EvaluatedSet:
    """A dataset with its evaluator rows: embeddings, labels, FIQA, synthetic-row mask."""

    name: str
    path: Path
    info: DatasetInfo
    rows: Embeddings
    synthetic: np.ndarray

    @property
    def synthetic_rows(self) -> Embeddings:
        return self.rows.select(self.synthetic)


def open_dataset(path: Path, what: str) -> DatasetInfo:
    """dataset.json of a shard directory, or a ShardError naming the setting and the path."""
    try:
        info = read_dataset_json(path)
        list_shards(path)
    except ShardError as exc:
        raise ShardError(f"{what}: no usable dataset at {path} ({exc})") from exc
    return info


def real_identities_in(ds: EvaluatedSet, ref: EvaluatedSet) -> list[str]:
    """The reference's (real) identity names among ``ds``'s synthetic rows: real-ID augmentation."""
    return shared_identities(ds.rows.labels[ds.synthetic], ds.info.identities, ref.info.identities)


def check_classes(labels: np.ndarray, info: DatasetInfo, where: str) -> None:
    """ValueError naming the classes of dataset.json that have no images in the shards."""
    counts = np.bincount(labels, minlength=info.num_classes)
    if counts.size != info.num_classes or (counts == 0).any():
        empty = np.flatnonzero(counts == 0)[:10].tolist()
        raise ValueError(f"{where}: dataset.json lists {info.num_classes} classes, the shards have labels "
                         f"0..{counts.size - 1}; empty classes (first 10): {empty}")


def common_fiqa_range(parts: list[Embeddings]) -> tuple[float, float] | None:
    """One min-max FIQA range over all compared datasets, so their diversities share a scale (None: no FIQA)."""
    if any(p.fiqa is None for p in parts):
        return None
    lo, hi = min(float(p.fiqa.min()) for p in parts), max(float(p.fiqa.max()) for p in parts)
    return (lo, hi) if hi > lo else None


def analysis_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def display_name(path: Path) -> str:
    """``.../<name>/train`` -> ``<name>`` (the run layout of datasets), else the folder name."""
    return path.parent.name if path.name == "train" and path.parent.name else path.name
