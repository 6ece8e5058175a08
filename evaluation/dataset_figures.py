"""Figures of the dataset evaluation: identity grids, lowest-property grids (VIGFace Fig. 18-20),
genuine/impostor histograms (Fig. 10), prototype matrix and t-SNE (Fig. 1, 3), leakage top matches (Fig. 11)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.dataset_plots import plot_prototype_similarity, plot_tsne
from evaluation.embed import load_faces
from evaluation.evaluated_set import EvaluatedSet
from evaluation.leakage import LeakageReport
from evaluation.plots import image_grid, plot_similarity_histogram
from evaluation.properties import DatasetProperties, lowest_fraction
from evaluation.report import choose_prototypes, class_rows, pair_cosines, prototype_rows, sample_pairs

GRID_CLASSES = 4  # classes in a per-identity grid
GRID_IMAGES = 8  # images per class row
LOWEST_FRACTION = 0.05  # Fig. 18-20
LOWEST_MAX_ROWS = 8
HIST_PAIRS = 5000  # genuine and impostor pairs per dataset (Fig. 10)
TSNE_CLASSES = 8  # real and virtual prototypes each
TSNE_IMAGES = 20  # images per prototype


def plot_leakage_pairs(report: LeakageReport, synth: EvaluatedSet, ref: EvaluatedSet, path: Path,
                       max_pairs: int = 8) -> Path:
    """Fig. 11: top matches as (synthetic | nearest real) image pairs, one pair per grid row."""
    synth_global = np.flatnonzero(synth.synthetic)
    matches = report.top_matches[:max_pairs]
    real_rows = []
    for m in matches:
        if report.mode == "image":
            real_rows.append(m.real_index)
        else:  # centre mode: show the real image of the matched class most similar to the synthetic one
            members = np.flatnonzero(ref.rows.labels == m.real_index)
            q = synth.rows.embeddings[synth_global[m.synthetic_index]]
            real_rows.append(int(members[np.argmax(ref.rows.embeddings[members] @ q)]))
    s_faces = load_faces(synth.path, [synth_global[m.synthetic_index] for m in matches], synth.info.image_size)
    r_faces = load_faces(ref.path, real_rows, ref.info.image_size)
    tiles, labels = [], []
    for m, s, r, real_row in zip(matches, s_faces, r_faces, real_rows):
        tiles += [s, _resize(r, s.shape[0])]
        labels += [f"{synth.info.identities[m.synthetic_label]} {m.similarity:.3f}",
                   ref.info.identities[int(ref.rows.labels[real_row])]]
    image_grid(tiles, 2, path, labels=labels)
    return path


def _resize(face: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return face if face.shape[0] == side else cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)


def class_grid(ds: EvaluatedSet, classes: list[int], path: Path, per_class: int = GRID_IMAGES,
                captions: list[str] | None = None) -> Path:
    """One row per class (blank tiles where a class has fewer images)."""
    rows = class_rows(ds.rows.labels, classes, per_class)
    faces = load_faces(ds.path, np.concatenate(rows), ds.info.image_size)
    side = ds.info.image_size
    blank = np.full((side, side, 3), 255, np.uint8)
    tiles, labels, k = [], [], 0
    for c, r in enumerate(rows):
        tiles += faces[k:k + len(r)] + [blank] * (per_class - len(r))
        labels += [captions[c] if captions and j == 0 else "" for j in range(per_class)]
        k += len(r)
    image_grid(tiles, per_class, path, labels=labels)
    return path


def lowest_grids(ds: EvaluatedSet, props: DatasetProperties, out: Path) -> list[Path]:
    """Fig. 18-20: classes with the lowest consistency, nearest-centre distance (separability), diversity."""
    names = ds.info.identities
    paths = []
    for metric, fig in (("consistency", "consistency"), ("nearest_distance", "separability"), ("diversity", "diversity")):
        classes = lowest_fraction(props, metric, LOWEST_FRACTION)[:LOWEST_MAX_ROWS].tolist()
        if not classes:
            continue
        path = out / f"lowest_{fig}_{ds.name}.png"
        if metric == "nearest_distance":  # each class in a row above its most similar other class
            shown, captions = [], []
            for k in classes:
                near = int(props.nearest_class[k])
                shown += [k, near]
                captions += [f"{names[k]} cos {props.nearest_class_similarity[k]:.2f}", f"nearest: {names[near]}"]
            paths.append(class_grid(ds, shown, path, GRID_IMAGES // 2, captions))
        else:
            values = props.metric(metric)
            captions = [f"{names[c]} {fig[0].upper()}={values[c]:.3f}" for c in classes]
            paths.append(class_grid(ds, classes, path, GRID_IMAGES, captions))
    return paths


def similarity_histogram(ds: EvaluatedSet, out: Path, seed: int) -> Path | None:
    """Fig. 10: cosine of genuine (same class) vs impostor (different class) pairs sampled from the dataset."""
    i, j, same = sample_pairs(ds.rows.labels, HIST_PAIRS, seed)
    if not same.any() or same.all():
        return None
    path = out / f"similarity_hist_{ds.name}.png"
    plot_similarity_histogram(pair_cosines(ds.rows.embeddings, i, j), same, path,
                              title=f"{ds.name}: genuine vs impostor cosine")
    return path


def prototype_figures(prototypes_prefix: Path, sets: dict[str, EvaluatedSet], out: Path, seed: int) -> list[Path]:
    """Fig. 3 (prototype cosine matrix) and Fig. 1 (t-SNE of real/virtual prototypes with their images)."""
    from fr.prototypes import load_prototypes

    protos = load_prototypes(prototypes_prefix)
    weight = protos.weight.float().numpy()
    paths = [out / "prototype_similarity.png"]
    plot_prototype_similarity(weight, protos.num_real, paths[0], seed=seed)
    class_protos = {name: prototype_rows(ds.info.identities, protos.identities, protos.num_real, protos.num_virtual,
                                         ds.info.extra.get("proto_index")) for name, ds in sets.items()}
    chosen = choose_prototypes(class_protos, protos.num_real, protos.num_virtual, TSNE_CLASSES)
    emb, lab = [], []
    for k, (_, name, label) in enumerate(chosen):
        if name is not None:
            idx = class_rows(sets[name].rows.labels, [label], TSNE_IMAGES)[0]
            emb.append(sets[name].rows.embeddings[idx])
            lab.append(np.full(idx.size, k))
    if emb:
        rows = np.array([row for row, _, _ in chosen])
        paths.append(out / "tsne_prototypes.png")
        plot_tsne(weight[rows], np.concatenate(emb), np.concatenate(lab), paths[-1],
                  is_virtual=rows >= protos.num_real, seed=seed)
    return paths
