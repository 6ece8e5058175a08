"""Embeddings of face shards with an evaluator FR model (backbone + optional CR-FIQA quality head).

Plain torch: :func:`embed_faces` embeds decoded faces in batches (optionally with the flip test),
:func:`embed_shards` does a whole shard directory in a loop. The Ray job runs the same
:meth:`Evaluator.embed` inside an actor pool; both give identical rows.

Embeddings are L2-normalised float32 [N, d]; with ``flip`` each is the normalised sum of the
embeddings of the image and its mirror image. FIQA scores are the quality head's prediction on the
raw embedding of the unflipped image, the input the head was trained on (``fr.fr_model.FRNet``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fr.face_embedder import EmbedderMismatchError as EvaluatorMismatchError  # noqa: F401  (re-exported)
from fr.face_embedder import FaceEmbedder as Evaluator
from fr.face_embedder import check_embedder_fits as check_evaluator_fits  # noqa: F401  (re-exported)
from fr.face_embedder import load_face_embedder as load_evaluator  # noqa: F401  (re-exported)
from fr.data.images import decode_image
from fr.data.shards import list_shards, read_table


@dataclass
class Embeddings:
    """Rows of one dataset (or shard): unit embeddings [N, d], labels [N], FIQA scores [N] or None."""

    embeddings: np.ndarray
    labels: np.ndarray
    fiqa: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if self.embeddings.ndim != 2 or self.labels.shape != (n,):
            raise ValueError(f"embeddings [N, d] and labels [N] disagree: {self.embeddings.shape}, {self.labels.shape}")
        if self.fiqa is not None and self.fiqa.shape != (n,):
            raise ValueError(f"fiqa must have shape [{n}], got {self.fiqa.shape}")

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def select(self, mask: np.ndarray) -> "Embeddings":
        """Rows where ``mask`` (bool [N]) is set."""
        return Embeddings(self.embeddings[mask], self.labels[mask], None if self.fiqa is None else self.fiqa[mask])

    @staticmethod
    def concat(parts: Sequence["Embeddings"]) -> "Embeddings":
        """Rows of ``parts`` one after the other; FIQA kept only when every part has it."""
        if not parts:
            raise ValueError("no embeddings to concatenate")
        dims = {p.dim for p in parts}
        if len(dims) > 1:
            raise ValueError(f"cannot concatenate embeddings of dimensions {sorted(dims)}")
        fiqa = None if any(p.fiqa is None for p in parts) else np.concatenate([p.fiqa for p in parts])
        return Embeddings(np.concatenate([p.embeddings for p in parts]), np.concatenate([p.labels for p in parts]), fiqa)


def embed_faces(evaluator: Evaluator, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """Faces [N, H, W, 3] uint8 in batches -> (embeddings float32 [N, d], FIQA [N] or None)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("no images to embed")
    parts = [evaluator.embed(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]
    emb = np.concatenate([p[0] for p in parts])
    fiqa = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    return emb, fiqa


# ------------------------------------------------------------------------------------------------
# reading shards


def decode_faces(images: Sequence[bytes], image_size: int, where: str = "images") -> np.ndarray:
    """Decode encoded faces into uint8 [N, S, S, 3]; ValueError naming the row if one is undecodable or not SxS."""
    out = np.empty((len(images), image_size, image_size, 3), np.uint8)
    for i, data in enumerate(images):
        try:
            rgb = decode_image(data)
        except ValueError as exc:
            raise ValueError(f"{where}, row {i}: {exc}") from exc
        if rgb.shape[:2] != (image_size, image_size):
            raise ValueError(f"{where}, row {i}: image is {rgb.shape[1]}x{rgb.shape[0]}, the dataset's image_size "
                             f"is {image_size}")
        out[i] = rgb
    return out


def shard_num_rows(path: str | Path) -> int:
    """Rows of a Parquet shard, from its footer (no data read)."""
    return int(pq.ParquetFile(path).metadata.num_rows)


def iter_shard_faces(path: str | Path, image_size: int, batch_rows: int
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, faces uint8 [n, S, S, 3], labels [n]) of one shard, ``batch_rows`` rows at a time.

    The shard is opened once (memory-mapped) and only one batch is decoded at a time, so a shard of
    any size streams in bounded memory.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    table = read_table(path, columns=["image", "label"])
    labels = table.column("label").to_numpy().astype(np.int64)
    for start in range(0, table.num_rows, batch_rows):
        part = table.column("image").slice(start, batch_rows).to_pylist()
        faces = decode_faces(part, image_size, f"{path} (rows from {start})")
        yield start, faces, labels[start:start + len(part)]


def read_shard_faces(path: str | Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All decoded faces uint8 [n, S, S, 3] and labels [n] of one shard."""
    _, faces, labels = next(iter_shard_faces(path, image_size, max(1, shard_num_rows(path))))
    return faces, labels


def read_columns(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels int64 [N] and a synthetic-row mask bool [N] of all shards, in shard order."""
    labels, synthetic = [], []
    for p in list_shards(directory):
        t = read_table(p, columns=["label", "source"])
        labels.append(t.column("label").to_numpy().astype(np.int64))
        synthetic.append(np.asarray(t.column("source").to_pylist()) == "synthetic")
    return np.concatenate(labels), np.concatenate(synthetic)


def load_faces(directory: str | Path, rows: Sequence[int], image_size: int) -> list[np.ndarray]:
    """Decoded faces at global row indices (shard order) of a dataset, in the order of ``rows``."""
    paths = list_shards(directory)
    offsets = np.concatenate([[0], np.cumsum([shard_num_rows(p) for p in paths])])
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= offsets[-1]):
        raise ValueError(f"{directory}: rows must lie in [0, {offsets[-1]}), got [{rows.min()}, {rows.max()}]")
    shard_of = np.searchsorted(offsets, rows, side="right") - 1
    out: list[np.ndarray | None] = [None] * len(rows)
    for s in np.unique(shard_of):
        pick = np.flatnonzero(shard_of == s)
        column = read_table(paths[s], columns=["image"]).column("image")
        data = [column[int(rows[i] - offsets[s])].as_py() for i in pick]
        for i, face in zip(pick, decode_faces(data, image_size, str(paths[s]))):
            out[i] = face
    return out  # type: ignore[return-value]


def embed_shards(evaluator: Evaluator, paths: Sequence[str | Path], image_size: int,
                 batch_size: int = 256) -> dict[Path, Embeddings]:
    """Plain-loop embeddings of whole shards (the reference for the Ray actor pool), keyed by shard path."""
    out = {}
    for p in paths:
        parts = []
        for _, faces, labels in iter_shard_faces(p, image_size, batch_size):
            emb, fiqa = evaluator.embed(faces)
            parts.append(Embeddings(emb, labels, fiqa))
        out[Path(p)] = Embeddings.concat(parts)
    return out
