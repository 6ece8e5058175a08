"""The dataset evaluation as one function: properties normalised by the reference (VIGFace Fig. 6a),
identity leakage and the privacy verdict of every synthetic set (Fig. 6b, 11), and the figures."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluation.dataset_figures import (GRID_CLASSES, class_grid, lowest_grids, plot_leakage_pairs, prototype_figures,
                                        similarity_histogram)
from evaluation.dataset_plots import plot_leakage_distributions, plot_property_bars
from evaluation.evaluated_set import EvaluatedSet, analysis_device, common_fiqa_range
from evaluation.leakage import LeakageReport, real_nearest_negative
from evaluation.privacy import LeakageSettings, privacy_gate
from evaluation.properties import compute_properties
from evaluation.report import dataset_summary


@dataclass
class DatasetAnalysis:
    summaries: dict[str, dict[str, Any]]
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def analyse_datasets(sets: dict[str, EvaluatedSet], ref_name: str, settings: LeakageSettings, sep_threshold: float,
                     out: Path, seed: int, prototypes_prefix: Path | None = None,
                     where: dict[str, str] | None = None, context: dict[str, Any] | None = None) -> DatasetAnalysis:
    """Properties of every set (``ref_name`` is the real reference), leakage + privacy verdict of every set
    with synthetic rows, and the figures written under ``out``. ``where`` names each set's config setting
    for error messages; ``context`` (evaluator, ...) is copied into each verdict."""
    where, context = where or {}, context or {}
    ref = sets[ref_name]
    device = analysis_device()
    fiqa_range = common_fiqa_range([ds.rows for ds in sets.values()])
    props = {}
    for name, ds in sets.items():
        try:
            props[name] = compute_properties(ds.rows.embeddings, ds.rows.labels, ds.rows.fiqa,
                                             sep_threshold=sep_threshold, fiqa_range=fiqa_range, device=device)
        except ValueError as exc:
            raise ValueError(f"{where.get(name, name)} {ds.path}: {exc}") from exc
    real_reference = None
    leak: dict[str, LeakageReport] = {}
    privacy: dict[str, dict] = {}
    figures: list[Path] = []
    for name, ds in sets.items():
        if name == ref_name or not ds.synthetic.any():
            continue
        if real_reference is None:
            real_reference = real_nearest_negative(ref.rows.embeddings, ref.rows.labels, settings.mode,
                                                   **settings.knn_kwargs())
        privacy[name], leak[name] = privacy_gate(settings, ds, ref, real_reference, **context,
                                                 reference=str(ref.path))
        privacy[name]["top_matches"] = [asdict(m) for m in leak[name].top_matches]
        figures.append(plot_leakage_pairs(leak[name], ds, ref, out / f"leakage_top_matches_{name}.png"))
    summaries = {name: dataset_summary(props[name], props[ref_name], len(ds.rows), ds.info.identities,
                                       privacy.get(name)) for name, ds in sets.items()}
    if leak:
        figures.append(out / "leakage_distributions.png")
        plot_leakage_distributions(list(leak.items()), figures[-1])
    figures.append(out / "properties_vs_reference.png")
    plot_property_bars({n: s["normalised"] for n, s in summaries.items()}, figures[-1])
    for name, ds in sets.items():
        figures.append(class_grid(ds, list(range(min(GRID_CLASSES, ds.info.num_classes))),
                                  out / f"identities_{name}.png", captions=ds.info.identities[:GRID_CLASSES]))
        figures += lowest_grids(ds, props[name], out)
        hist = similarity_histogram(ds, out, seed)
        figures += [hist] if hist else []
    if prototypes_prefix is not None:
        figures += prototype_figures(prototypes_prefix, sets, out, seed)
    return DatasetAnalysis(summaries, privacy, figures)
