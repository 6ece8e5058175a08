"""Code vectors: one unit vector per identity, the starting point of GIF's codes (no Ray here).

GIF only needs "a meaningful order of similarity" between identities (supplement §9), so three sources:

* ``file``: features computed elsewhere (CLIP, DINO, ...), a safetensors file (tensor ``features``
  ``[N, d]``, identities in its JSON metadata ``identities`` or a separate list) or an ``.npy`` array plus an
  identity list (``.txt`` one per line, or a JSON list). Rows are re-ordered to the dataset's labels; the
  identity sets must match the dataset's ``dataset.json`` exactly (clear error listing the differences).
* ``embedder``: class means of an FR model's unit embeddings (our export prefix or an insightface ``.pth``
  through :func:`fr.face_embedder.load_face_embedder`).
* ``pixels`` (offline default, no model): class-mean pixels of ``PIXEL_SIZE`` px thumbnails, reduced by
  PCA (sklearn) to ``dim`` components.

The per-shard pass (:func:`shard_class_sums`) is the unit a job can run as one Ray task per shard; its
sums are added up and finished by :func:`unit_class_means` / :func:`pca_vectors`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from fr.data.face_dataset import decode_batch
from fr.data.images import resize_faces
from fr.data.shards import read_table

log = logging.getLogger(__name__)

PIXEL_SIZE = 16  # thumbnail side of the offline pixel source (16*16*3 = 768 raw dims)
Featurise = Callable[[np.ndarray], np.ndarray]  # uint8 faces [B, S, S, 3] -> float features [B, d]


class CodeVectorError(ValueError):
    """A features file or a source of code vectors does not fit the dataset."""


def unit_rows(x: np.ndarray, where: str) -> np.ndarray:
    """Rows of ``x`` scaled to unit norm (float32); CodeVectorError naming ``where`` for a zero or non-finite row."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise CodeVectorError(f"{where}: expected a non-empty [N, d] array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-12))
    if bad.size:
        raise CodeVectorError(f"{where}: {bad.size} row(s) are zero or non-finite, first rows {bad[:10].tolist()}")
    return (x / norms[:, None]).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# a user-supplied features file


def _read_identity_list(path: Path) -> list[str]:
    if not path.is_file():
        raise CodeVectorError(f"identity list {path} not found")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise CodeVectorError(f"{path}: expected a JSON list of identity strings")
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_features_file(path: str | Path, identities_path: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """``(features [N, d] float32, identities [N])`` from a safetensors or ``.npy`` features file."""
    path = Path(path)
    if not path.is_file():
        raise CodeVectorError(f"features file {path} not found (gif.features)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            if "features" not in f.keys():
                raise CodeVectorError(f"{path}: no tensor named 'features' (found {sorted(f.keys())})")
            feats = f.get_tensor("features")
            meta = f.metadata() or {}
        if identities_path:
            identities = _read_identity_list(Path(identities_path))
        elif "identities" in meta:
            identities = json.loads(meta["identities"])
        else:
            raise CodeVectorError(f"{path}: no 'identities' metadata; give an identity list (gif.features_identities)")
    elif path.suffix == ".npy":
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
        if not identities_path:
            raise CodeVectorError(f"{path}: an .npy features file needs an identity list (gif.features_identities)")
        identities = _read_identity_list(Path(identities_path))
    else:
        raise CodeVectorError(f"{path}: features must be .safetensors or .npy, got {path.suffix!r}")
    if feats.ndim != 2 or feats.shape[0] != len(identities):
        raise CodeVectorError(f"{path}: features shape {feats.shape} does not match {len(identities)} identities")
    return np.asarray(feats, dtype=np.float32), list(identities)


def align_to_dataset(features: np.ndarray, identities: list[str], dataset_identities: list[str],
                     where: str) -> np.ndarray:
    """Rows of ``features`` re-ordered to ``dataset_identities`` (label order); CodeVectorError unless the sets match."""
    index = {ident: i for i, ident in enumerate(identities)}
    if len(index) != len(identities):
        raise CodeVectorError(f"{where}: identity list has duplicates")
    missing = [s for s in dataset_identities if s not in index]
    extra = sorted(set(index) - set(dataset_identities))
    if missing or extra:
        raise CodeVectorError(f"{where}: identities do not match the dataset's dataset.json: {len(missing)} missing "
                              f"(first {missing[:5]}), {len(extra)} not in the dataset (first {extra[:5]})")
    return features[np.array([index[s] for s in dataset_identities], dtype=np.int64)]


def file_code_vectors(path: str | Path, dataset_identities: list[str],
                      identities_path: str | Path | None = None) -> np.ndarray:
    """Unit code vectors ``[N, d]`` in label order from a user features file."""
    feats, identities = read_features_file(path, identities_path)
    return unit_rows(align_to_dataset(feats, identities, dataset_identities, str(path)), str(path))


# ------------------------------------------------------------------------------------------------
# class sums over shards (embedder or pixels)


def shard_class_sums(path: str | Path, num_classes: int, image_size: int, featurise: Featurise,
                     batch_rows: int = 256) -> tuple[np.ndarray, np.ndarray, int]:
    """``(sums [C, d] float64, counts [C] int64, skipped)`` of ``featurise`` over one shard.

    Undecodable or wrongly sized faces are skipped and counted, never fatal.
    """
    table = read_table(path, columns=["image", "label"])
    labels = table.column("label").to_numpy().astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CodeVectorError(f"{path}: labels outside [0, {num_classes}) of dataset.json")
    sums, counts, skipped = None, np.zeros(num_classes, np.int64), 0
    for start in range(0, table.num_rows, batch_rows):
        data = table.column("image").slice(start, batch_rows).to_pylist()
        faces, labs, bad = decode_batch(data, labels[start:start + len(data)], image_size)
        skipped += bad
        if not len(labs):
            continue
        feats = np.asarray(featurise(faces), dtype=np.float64)
        if sums is None:
            sums = np.zeros((num_classes, feats.shape[1]), np.float64)
        np.add.at(sums, labs, feats)
        counts += np.bincount(labs, minlength=num_classes)
    if skipped:
        log.warning("%s: %d undecodable faces skipped", path, skipped)
    return (sums if sums is not None else np.zeros((num_classes, 0))), counts, skipped


def add_sums(parts: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Total of several :func:`shard_class_sums` results."""
    parts = [p for p in parts if p[0].shape[1]]
    if not parts:
        raise CodeVectorError("no decodable faces in any shard")
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


def check_counts(counts: np.ndarray, where: str) -> None:
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise CodeVectorError(f"{where}: {empty.size} class(es) have no decodable face, first {empty[:10].tolist()}")


def unit_class_means(sums: np.ndarray, counts: np.ndarray, where: str = "class means") -> np.ndarray:
    """Unit class means ``[C, d]`` from summed features."""
    check_counts(counts, where)
    return unit_rows(sums / counts[:, None], where)


def pixel_featuriser(size: int = PIXEL_SIZE) -> Featurise:
    """Faces -> flattened ``size`` px thumbnails in [0, 1] (area averaging)."""
    def featurise(faces: np.ndarray) -> np.ndarray:
        return resize_faces(faces, size).reshape(len(faces), -1).astype(np.float32) / 255.0
    return featurise


def embedder_featuriser(embedder) -> Featurise:
    """Faces -> unit embeddings of a :class:`fr.face_embedder.FaceEmbedder` (resized to its input when needed)."""
    def featurise(faces: np.ndarray) -> np.ndarray:
        if faces.shape[1] != embedder.input_size and not embedder.auto_resize:
            faces = resize_faces(faces, embedder.input_size)
        return embedder.embed(faces)[0]
    return featurise


def pca_vectors(sums: np.ndarray, counts: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Unit code vectors ``[C, dim']`` from class-mean pixels by PCA (``dim' = min(dim, C - 1, raw dims)``)."""
    from sklearn.decomposition import PCA

    check_counts(counts, "pixel class means")
    means = sums / counts[:, None]
    k = int(min(dim, means.shape[0] - 1, means.shape[1]))
    if k < 1:
        raise CodeVectorError(f"pixel PCA needs at least 2 classes, got {means.shape[0]}")
    pca = PCA(n_components=k, svd_solver="randomized" if k < min(means.shape) // 2 else "full", random_state=seed)
    reduced = pca.fit_transform(means)
    meta = {"pca_components": k, "pca_explained_variance": float(pca.explained_variance_ratio_.sum())}
    return unit_rows(reduced, "pixel PCA"), meta
