"""``evaluate``: dataset properties, identity leakage and verification, in one MLflow run.

For the reference (real) dataset and every dataset in ``evaluate.datasets``: embeddings with the
evaluator FR model through Ray Data batch inference (shards decoded by CPU tasks, embedded by an
actor pool that loads the evaluator once), cached beside each dataset; then consistency /
separability / diversity normalised by the reference (VIGFace Fig. 6a), identity leakage of the
synthetic rows against the reference (Fig. 6b, 11), genuine/impostor histograms (Fig. 10), image
grids (Fig. 4/5, 18-20), prototype figures (Fig. 1, 3) when the evaluator has a prototype file
beside it, and verification of ``evaluate.checkpoints``. Writes
``<run.output_dir>/evaluate/<run.name>/report.json`` and prints a compact table.

The embedding pass is ``ray_jobs.embedding_pass``, the analysis ``evaluation.dataset_report``; this job
embeds, calls, writes and logs.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch

from evaluation.dataset_report import analyse_datasets
from evaluation.embed import check_evaluator_fits, load_evaluator
from evaluation.evaluated_set import display_name
from evaluation.generation_fidelity import format_fidelity
from evaluation.independent_evaluator import dataset_real_id_fidelity
from evaluation.report import (flat_metrics, format_summary_table, format_verification_table, json_safe,
                               metric_name)
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig
from ray_jobs.embedding_pass import evaluator_files, load_sets
from ray_jobs.errors import MissingInputError
from ray_jobs.privacy_check import leakage_settings, run_privacy_check  # noqa: F401  (run_privacy_check: re-exported)
from ray_jobs.tracking import mlflow_run

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# verification


@ray.remote
def _verify_task(prefix: str, bins: list[str], batch_size: int, use_gpu: bool) -> tuple[dict, dict[str, bytes]]:
    from fr.backbones import load_backbone
    from evaluation.backbone_verification import evaluate_backbone, verification_sets

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    backbone = load_backbone(prefix, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate_backbone(backbone, verification_sets(bins), device, batch_size, plot_dir=Path(tmp))
        return metrics, {p.name: p.read_bytes() for p in sorted(Path(tmp).glob("*.png"))}


def checkpoint_name(prefix: Path, taken: set[str]) -> str:
    """``runs/x/fr/<run>/backbone`` -> ``<run>``; a file stem otherwise; made unique."""
    base = prefix.parent.name if prefix.name == "backbone" and prefix.parent.name else prefix.name
    return _unique(base, taken)


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def verify_checkpoints(cfg: FacesynthConfig, out: Path) -> dict[str, dict[str, float]]:
    """10-fold verification (flip test) of every ``evaluate.checkpoints`` backbone (default: the train_fr
    export, when there is one), one Ray task each."""
    e = cfg.evaluate
    checkpoints = list(e.checkpoints)
    if not checkpoints and Path(str(layout.fr_backbone_prefix(cfg)) + ".safetensors").is_file():
        checkpoints = [str(layout.fr_backbone_prefix(cfg))]
    if not checkpoints:
        return {}
    bins = [Path(b) for b in e.verify_bins] if e.verify_bins else layout.verify_bins(cfg)
    missing = [str(b) for b in bins if not b.is_file()]
    if missing or not bins:
        raise MissingInputError(f"evaluate.verify_bins: {'not found: ' + str(missing) if missing else 'none found'}"
                                " (set evaluate.verify_bins to .bin files)")
    prefixes = [Path(c).with_suffix("") if Path(c).suffix in (".safetensors", ".json") else Path(c)
                for c in checkpoints]
    for p in prefixes:
        if not Path(str(p) + ".safetensors").is_file():
            raise FileNotFoundError(f"evaluate.checkpoints: {p}.safetensors not found")
    init_ray(cfg.ray)
    remote = {"num_cpus": e.cpus_per_actor, "num_gpus": e.gpus_per_actor}
    refs = [_verify_task.options(**remote).remote(str(p), [str(b) for b in bins], e.batch_size, e.gpus_per_actor > 0)
            for p in prefixes]
    taken: set[str] = set()
    results = {}
    for p, (metrics, pngs) in zip(prefixes, ray.get(refs)):
        name = checkpoint_name(p, taken)
        results[name] = metrics
        for fname, data in pngs.items():
            (out / "verification" / name).mkdir(parents=True, exist_ok=True)
            (out / "verification" / name / fname).write_bytes(data)
    return results


# ------------------------------------------------------------------------------------------------
# the job


def _dataset_names(cfg: FacesynthConfig, ref: Path) -> dict[str, tuple[Path, str]]:
    """Unique display names -> (path, the setting that named it); the reference first."""
    taken: set[str] = set()
    named = {}
    datasets = [Path(d) for d in cfg.evaluate.datasets]
    if not datasets:  # default: the dataset the generate job writes, when there is one
        if (layout.generate_out_dir(cfg) / "dataset.json").is_file():
            datasets = [layout.generate_out_dir(cfg)]
    for i, p in enumerate([ref] + datasets):
        if i > 0 and p.resolve() == ref.resolve():
            continue
        named[_unique(display_name(p), taken)] = (p, "evaluate.reference" if i == 0 else f"evaluate.datasets[{i - 1}]")
    return named


def run_evaluate(cfg: FacesynthConfig) -> dict[str, Any]:
    """The ``evaluate`` job; returns the report written to ``report.json``."""
    files = evaluator_files(cfg)
    evaluator = load_evaluator(files.backbone, files.quality, files.flip)
    ref_path = layout.evaluate_reference_dir(cfg)
    named = _dataset_names(cfg, ref_path)
    ref_name = next(iter(named))
    out = layout.evaluate_report_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if files.prototypes is not None:
        from fr.prototypes import load_prototypes

        check_evaluator_fits(evaluator, embedding_size=load_prototypes(files.prototypes).embedding_size,
                             where=f"prototypes {files.prototypes}")
    with mlflow_run(cfg, "evaluate") as tracker:
        sets, cache = load_sets(cfg, files, evaluator, named)
        analysis = analyse_datasets(sets, ref_name, leakage_settings(cfg), cfg.evaluate.sep_threshold, out,
                                    cfg.run.seed, files.prototypes, where={n: w for n, (_, w) in named.items()},
                                    context={"evaluator": str(files.backbone)})
        summaries, figures = analysis.summaries, analysis.figures
        for name, ds in sets.items():  # real-ID fidelity by the evaluator (its class means of the real images)
            fidelity = dataset_real_id_fidelity(ds, sets[ref_name]) if name != ref_name and ds.synthetic.any() else None
            if fidelity is not None:
                summaries[name]["real_id_fidelity"] = fidelity
        verification = verify_checkpoints(cfg, out)
        figures += sorted((out / "verification").glob("*/*.png"))

        report = json_safe({
            "evaluator": str(files.backbone), "evaluator_quality": str(files.quality) if files.quality else None,
            "evaluator_key": files.key, "reference": ref_name,
            "datasets": {n: {"path": str(sets[n].path), **s} for n, s in summaries.items()},
            "verification": verification, "embedding_cache": cache,
            "settings": {k: getattr(cfg.evaluate, k) for k in ("leakage_mode", "leakage_quantile",
                                                               "gate", "gate_alpha", "max_leak_fraction",
                                                               "sep_threshold")},
            "figures": [str(p.relative_to(out)) for p in figures],
        })
        (out / "report.json").write_text(json.dumps(report, indent=1))
        tracker.metrics(flat_metrics(summaries, verification))
        tracker.metrics({metric_name(n, "real_id_fidelity", k): float(v) for n, s in summaries.items()
                         for k, v in s.get("real_id_fidelity", {}).items() if v == v})  # v == v: not NaN
        for p in figures:
            tracker.artifact(p, "evaluate/" + str(p.parent.relative_to(out)) if p.parent != out else "evaluate")
        tracker.artifact(out / "report.json", "evaluate")
        table = format_summary_table(summaries, ref_name)
        fid = {n: s["real_id_fidelity"] for n, s in summaries.items() if "real_id_fidelity" in s}
        if fid:
            table += "\n\n" + format_fidelity(fid, f"real-ID fidelity by the evaluator {files.backbone} "
                                                    "(own = its class mean of the real images)")
        if verification:
            table += "\n\n" + format_verification_table(verification)
        print(table, flush=True)
        (out / "summary.txt").write_text(table + "\n")
        tracker.artifact(out / "summary.txt", "evaluate")
        return report
