"""What the dataset evaluation reports: per-dataset summaries, the privacy verdict, the compact
terminal tables, flat metrics for MLflow, and the choice of rows the figures show (pairs for the
genuine/impostor histogram, image rows of classes, prototype rows of classes). Pure functions.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.leakage import LeakageReport
from evaluation.properties import DatasetProperties, normalise_to_reference

PROPERTIES = ("consistency", "separability", "diversity")


# ------------------------------------------------------------------------------------------------
# summaries


def shared_identities(labels: np.ndarray, identities: Sequence[str], reference_identities: Sequence[str]) -> list[str]:
    """Names of the classes in ``labels`` (indices into ``identities``) that are also reference identities."""
    names = {identities[int(label)] for label in np.unique(labels)}
    return sorted(names & set(reference_identities))


def privacy_verdict(report: LeakageReport, max_leak_fraction: float, real_identities: Sequence[str] = (),
                    **context: Any) -> dict[str, Any]:
    """The gate's decision and the figures behind it; ``context`` (evaluator, reference, ...) is copied in.

    A dataset passes only when at most ``max_leak_fraction`` of its identities exceed the real level,
    and none of its synthetic identities is one of the reference's real people (``real_identities``:
    real-ID augmentation depicts them by design, so it is never privacy-free, whatever the leakage
    figure says: a low one then only means the generator missed them).
    """
    leak_ok = bool(report.passes(max_leak_fraction))
    if real_identities:
        reason = f"depicts {len(real_identities)} real identities of the reference (real-ID augmentation)"
    else:
        reason = "leakage within the real level" if leak_ok else "identity leakage above the real level"
    return {
        "passed": leak_ok and not real_identities,
        "reason": reason,
        "num_real_identities": len(real_identities),
        "leak_fraction": report.leak_fraction,
        "num_identities": int(report.identity_labels.size),
        "num_leaking_identities": int(report.leaking_identities.size),
        "real_level": report.real_level,
        "mode": report.mode,
        "threshold_quantile": report.threshold_quantile,
        "max_leak_fraction": float(max_leak_fraction),
        **context,
    }


def dataset_summary(props: DatasetProperties, reference: DatasetProperties, num_images: int,
                    identities: Sequence[str] | None = None, privacy: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """One dataset's row of the report: sizes, C/S/D means (raw and / reference), unique and singleton classes."""
    singles = props.singleton_classes
    out: dict[str, Any] = {
        "images": int(num_images),
        "classes": props.num_classes,
        **{m: props.mean(m) for m in PROPERTIES},
        "normalised": normalise_to_reference(props, reference),
        "num_unique": props.num_unique,
        "unique_fraction": props.num_unique / props.num_classes,
        "num_singleton_classes": int(singles.size),
        "singleton_classes": [identities[i] if identities else int(i) for i in singles.tolist()],
        "privacy": dict(privacy) if privacy is not None else None,
    }
    return out


# ------------------------------------------------------------------------------------------------
# terminal tables


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def _verdict(privacy: Mapping[str, Any] | None, is_reference: bool) -> str:
    if is_reference:
        return "reference"
    if privacy is None:
        return "-"
    if privacy.get("num_real_identities"):
        return "FAIL (real ids)"
    return "pass" if privacy["passed"] else "FAIL"


def format_summary_table(summaries: Mapping[str, Mapping[str, Any]], reference: str) -> str:
    """dataset | images | classes | C | S | D | unique | 1-img | leak fraction | privacy.

    C, S and D print as ``mean (mean / reference mean)``.
    """
    rows = []
    for name, s in summaries.items():
        norm = s["normalised"]
        privacy = s.get("privacy")
        rows.append([
            name, str(s["images"]), str(s["classes"]),
            *[f"{_fmt(s[m])} ({_fmt(norm[m], 2)})" for m in PROPERTIES],
            str(s["num_unique"]), str(s["num_singleton_classes"]),
            _fmt(privacy["leak_fraction"]) if privacy else "-",
            _verdict(privacy, name == reference),
        ])
    header = ["dataset", "images", "classes", "C (/ref)", "S (/ref)", "D (/ref)", "unique", "1-img",
              "leak fraction", "privacy"]
    return format_table(header, rows)


def format_verification_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """checkpoint | benchmark | accuracy +- std | AUC, from ``verify/<set>/<metric>`` metrics per checkpoint."""
    rows = []
    for ckpt, metrics in results.items():
        sets = sorted({k.split("/")[1] for k in metrics if k.startswith("verify/")})
        for s in sets:
            p = f"verify/{s}/"
            rows.append([ckpt, s, f"{_fmt(metrics.get(p + 'accuracy'), 4)} +- {_fmt(metrics.get(p + 'accuracy_std'), 4)}",
                         _fmt(metrics.get(p + "auc"), 4)])
    return format_table(["checkpoint", "benchmark", "accuracy", "AUC"], rows)


# ------------------------------------------------------------------------------------------------
# metrics and JSON


def metric_name(*parts: str) -> str:
    """Parts joined by '/', each reduced to characters MLflow accepts in a metric name."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", p) for p in parts)


def flat_metrics(summaries: Mapping[str, Mapping[str, Any]],
                 verification: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """Finite scalar metrics for MLflow: ``<dataset>/<figure>``, ``<dataset>/privacy/...``, ``<ckpt>/verify/...``."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, (bool, int, float, np.floating, np.integer)) and math.isfinite(float(value)):
            out[key] = float(value)

    for name, s in summaries.items():
        for k in ("images", "classes", *PROPERTIES, "num_unique", "unique_fraction", "num_singleton_classes"):
            put(metric_name(name, k), s[k])
        for k, v in s["normalised"].items():
            put(metric_name(name, f"{k}_vs_reference"), v)
        for k, v in (s.get("privacy") or {}).items():
            put(metric_name(name, "privacy", k), v)
    for ckpt, metrics in (verification or {}).items():
        for k, v in metrics.items():
            put(metric_name(ckpt, *k.split("/")), v)
    return out


def json_safe(value: Any) -> Any:
    """Nested data with numpy scalars/arrays as Python values and NaN/inf as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


# ------------------------------------------------------------------------------------------------
# rows the figures show


def sample_pairs(labels: np.ndarray, num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``num_pairs`` genuine pairs (two distinct images of one class) and as many impostor pairs
    (images of two classes), drawn uniformly over images. Returns (i, j, issame)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    classes, start, counts = np.unique(labels[order], return_index=True, return_counts=True)
    pos = np.empty(len(labels), np.int64)  # position of each row inside its class block
    pos[order] = np.arange(len(labels)) - np.repeat(start, counts)
    cls = np.searchsorted(classes, labels)
    eligible = np.flatnonzero(counts[cls] >= 2)
    gi = np.empty(0, np.int64)
    gj = np.empty(0, np.int64)
    if eligible.size:
        gi = rng.choice(eligible, size=num_pairs)
        n = counts[cls[gi]]
        gj = order[start[cls[gi]] + (pos[gi] + 1 + rng.integers(0, n - 1)) % n]
    ii, jj = [], []
    if classes.size >= 2:
        need = num_pairs
        while need > 0:
            a = rng.integers(0, len(labels), size=2 * need)
            b = rng.integers(0, len(labels), size=2 * need)
            keep = labels[a] != labels[b]
            ii.append(a[keep][:need])
            jj.append(b[keep][:need])
            need -= int(min(keep.sum(), need))
    ii = np.concatenate(ii) if ii else np.empty(0, np.int64)
    jj = np.concatenate(jj) if jj else np.empty(0, np.int64)
    issame = np.concatenate([np.ones(gi.size, bool), np.zeros(ii.size, bool)])
    return np.concatenate([gi, ii]), np.concatenate([gj, jj]), issame


def pair_cosines(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine of rows i[k] and j[k] of an embedding matrix (normalised here)."""
    a = np.asarray(embeddings[i], np.float64)
    b = np.asarray(embeddings[j], np.float64)
    return np.einsum("nd,nd->n", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def class_rows(labels: np.ndarray, classes: Sequence[int], per_class: int) -> list[np.ndarray]:
    """For each class, its first ``per_class`` row indices (in row order)."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c)[:per_class] for c in classes]


def prototype_rows(identities: Sequence[str], proto_identities: Sequence[str] | None, num_real: int,
                   num_virtual: int, proto_index: Sequence[int] | None = None) -> np.ndarray:
    """Prototype row of each class (-1 if none): ``proto_index`` if the dataset records it, else by name:
    a real identity name listed in the prototype file, or ``virtual_<i>`` for virtual row ``num_real + i``."""
    if proto_index is not None:
        rows = np.asarray(proto_index, dtype=np.int64)
        if rows.shape != (len(identities),) or (rows >= num_real + num_virtual).any():
            raise ValueError(f"proto_index must hold {len(identities)} rows < {num_real + num_virtual}")
        return rows
    by_name = {n: i for i, n in enumerate(proto_identities or [])}
    out = np.full(len(identities), -1, np.int64)
    for k, name in enumerate(identities):
        m = re.fullmatch(r"virtual_(\d+)", name)
        if name in by_name:
            out[k] = by_name[name]
        elif m and int(m.group(1)) < num_virtual:
            out[k] = num_real + int(m.group(1))
    return out


def choose_prototypes(class_protos: Mapping[str, np.ndarray], num_real: int, num_virtual: int, per_kind: int
                      ) -> list[tuple[int, str | None, int | None]]:
    """Prototypes for the t-SNE figure: up to ``per_kind`` real and ``per_kind`` virtual rows.

    ``class_protos[name][label]`` is the prototype row of each class of a dataset (-1: none). Rows
    with images come first, as (row, dataset name, label) of their first class; virtual rows without
    images fill up the virtual quota as (row, None, None). Sorted by row.
    """
    picked: dict[int, tuple[str | None, int | None]] = {}
    counts = {False: 0, True: 0}  # is_virtual -> picked
    for name, rows in class_protos.items():
        for label, row in enumerate(np.asarray(rows).tolist()):
            kind = row >= num_real
            if row >= 0 and row not in picked and counts[kind] < per_kind:
                picked[row] = (name, label)
                counts[kind] += 1
    for row in range(num_real, num_real + num_virtual):
        if counts[True] >= per_kind:
            break
        if row not in picked:
            picked[row] = (None, None)
            counts[True] += 1
    return [(row, *picked[row]) for row in sorted(picked)]


def seed_mean_std(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """Verification figures over seeds: ``verify/<b>/accuracy`` is the mean of the seeds' accuracies and
    ``verify/<b>/accuracy_std`` their sample std (not the folds' std), other metrics are averaged."""
    runs = list(per_seed.values())
    out: dict[str, float] = {}
    for key in runs[0]:
        if key.endswith("/accuracy_std"):
            continue
        vals = np.asarray([r[key] for r in runs if key in r], dtype=np.float64)
        out[key] = float(vals.mean())
        if key.endswith("/accuracy"):
            out[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    out["num_seeds"] = float(len(runs))
    return out


def format_compare_table(results: dict[str, dict[str, Any]]) -> str:
    """setting | images | classes | accuracy +- std per benchmark (std over the folds, or over the seeds
    when the row has several: column ``std over``)."""
    benches = sorted({k.split("/")[1] for r in results.values() for k in r if k.endswith("/accuracy")})
    header = ["setting", "images", "classes", "std over", *benches]
    rows = [header]
    for setting, r in results.items():
        cells = [f"{100 * r.get(f'verify/{b}/accuracy', float('nan')):.2f} +- "
                 f"{100 * r.get(f'verify/{b}/accuracy_std', float('nan')):.2f}" for b in benches]
        n = int(r.get("num_seeds", 1))
        rows.append([setting, str(r["images"]), str(r["classes"]), f"{n} seeds" if n > 1 else "folds", *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
