"""What a reader of AugGen looks at in a generated mixed set (D_aug): each new class beside its two real
sources, and the set's own ``m_s`` / ``m_d`` (the search's metric, ``evaluation.mixing_metric``, on the
images that were actually written).

``auggen_generate which=mixed`` logs both; the classes' sources and (alpha, beta) come from the provenance
in D_aug's ``dataset.json`` (``generation.mixing`` / the job's plan).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.embed import embed_faces, load_faces, read_columns
from evaluation.mixing_metric import class_centres, m_total
from evaluation.plots import image_grid


def _first_rows(labels: np.ndarray, classes: Sequence[int], per_class: int) -> dict[int, np.ndarray]:
    """The first ``per_class`` global row indices of each class (shard order)."""
    return {int(c): np.flatnonzero(labels == c)[:per_class] for c in classes}


def mixed_class_figure(aug_dir: str | Path, real_dir: str | Path, classes: Sequence[Mapping[str, Any]],
                       image_size: int, real_image_size: int, path: str | Path, rows: int = 6,
                       per_class: int = 6) -> Path:
    """One row per new class (the first ``rows``): a real image of source i, one of source j, then
    ``per_class`` generated images of ``alpha c_i + beta c_j``; tiles labelled with the source labels and
    (alpha, beta). ``classes``: D_aug provenance records (``label``, ``sources``, ``alpha``, ``beta``)."""
    from fr.data.images import resize_faces

    shown = list(classes)[:rows]
    if not shown:
        raise ValueError(f"{aug_dir}: no mixed classes in the provenance to show")
    aug_labels, _ = read_columns(aug_dir)
    real_labels, _ = read_columns(real_dir)
    aug_rows = _first_rows(aug_labels, [c["label"] for c in shown], per_class)
    sources = sorted({int(s) for c in shown for s in c["sources"]})
    real_rows = _first_rows(real_labels, sources, 1)
    missing = [s for s in sources if not len(real_rows[s])]
    if missing:
        raise ValueError(f"{real_dir}: no images of source classes {missing}")
    real = dict(zip(sources, load_faces(real_dir, [int(real_rows[s][0]) for s in sources], real_image_size)))
    blank = np.full((image_size, image_size, 3), 255, np.uint8)
    tiles, labels = [], []
    for c in shown:
        i, j = (int(s) for s in c["sources"])
        gen = load_faces(aug_dir, aug_rows[int(c["label"])], image_size)
        tiles += list(resize_faces(np.stack([real[i], real[j]]), image_size)) + list(gen)
        tiles += [blank] * (per_class - len(gen))
        labels += [f"src {i}", f"src {j}", f"a={c['alpha']:g} b={c['beta']:g}"] + [""] * (per_class - 1)
    image_grid(tiles, per_class + 2, path, labels=labels)
    return Path(path)


def mixed_set_scores(embedder: Any, aug_dir: str | Path, real_dir: str | Path, classes: Sequence[Mapping[str, Any]],
                     image_size: int, real_image_size: int, max_classes: int = 64, max_per_class: int = 16,
                     max_real_per_class: int = 50) -> dict[str, float]:
    """``m_s``, ``m_d``, ``m_total`` of up to ``max_classes`` new classes of D_aug (``max_per_class`` images
    each, at least 2), embedded by ``embedder`` (M_orig), against the unit centres of their real sources."""
    chosen = list(classes)[:max_classes]
    aug_labels, _ = read_columns(aug_dir)
    real_labels, _ = read_columns(real_dir)
    rows = _first_rows(aug_labels, [c["label"] for c in chosen], max_per_class)
    m = min(len(r) for r in rows.values())
    if m < 2:
        raise ValueError(f"{aug_dir}: m_s needs >= 2 images per new class, a class has {m}")
    faces = load_faces(aug_dir, np.concatenate([rows[int(c["label"])][:m] for c in chosen]), image_size)
    emb, _ = embed_faces(embedder, np.stack(faces))
    src_i = np.array([int(c["sources"][0]) for c in chosen])
    src_j = np.array([int(c["sources"][1]) for c in chosen])
    wanted = np.unique(np.concatenate([src_i, src_j]))
    real_rows = np.concatenate([np.flatnonzero(real_labels == s)[:max_real_per_class] for s in wanted])
    real_emb, _ = embed_faces(embedder, np.stack(load_faces(real_dir, real_rows, real_image_size)))
    centres = dict(zip(wanted.tolist(), class_centres(real_emb, real_labels[real_rows], wanted)))
    scores = m_total(emb.reshape(len(chosen), m, -1), np.stack([centres[s] for s in src_i]),
                     np.stack([centres[s] for s in src_j]))
    return {**scores, "scored_classes": float(len(chosen)), "scored_images_per_class": float(m)}
