"""The run layout: the one place that knows where a run's datasets, models, reports and checkpoints live.

Everything a job writes goes under ``<run.output_dir>``:

```
data/<name>/train/          face shards + dataset.json (prepare, generate, auggen_generate, ...)
data/<name>/verify/*.bin    verification pairs (prepare)
<kind>/<run.name>/          an exported model: fr (backbone, prototypes), dit, auggen, distill, codes
<job>/<run.name>/           a job's report: evaluate, compare, auggen_search, ...
ray_train/                  Ray Train checkpoints (the resume state), one folder per <run.name>-<job>
```

Every path default of every job is a function here; jobs import these, never another job module.
"""
from __future__ import annotations

from pathlib import Path

from ray_jobs.config import FacesynthConfig


def run_root(cfg: FacesynthConfig) -> Path:
    return Path(cfg.run.output_dir)


def data_root(cfg: FacesynthConfig, name: str) -> Path:
    """``<output_dir>/data/<name>`` (holds ``train/`` and, for prepared real data, ``verify/``)."""
    return run_root(cfg) / "data" / name


def dataset_dir(cfg: FacesynthConfig, name: str) -> Path:
    """The shard directory of dataset ``name``."""
    return data_root(cfg, name) / "train"


def model_dir(cfg: FacesynthConfig, kind: str) -> Path:
    """``<output_dir>/<kind>/<run.name>``: the export of a trained model (``fr``, ``dit``, ``auggen``, ...)."""
    return run_root(cfg) / kind / cfg.run.name


def report_dir(cfg: FacesynthConfig, job: str) -> Path:
    """``<output_dir>/<job>/<run.name>``: a job's report files."""
    return run_root(cfg) / job / cfg.run.name


def ray_storage(cfg: FacesynthConfig) -> Path:
    """Ray Train's storage path (absolute): a run's resume key is ``<run.name>-<job>`` under it."""
    return (run_root(cfg) / "ray_train").resolve()


# ------------------------------------------------------------------------------------------------
# the defaults that chain the jobs


def prepared_dir(cfg: FacesynthConfig) -> Path:
    """Where ``prepare`` writes: ``data/<prepare.dataset_name>``."""
    return data_root(cfg, cfg.prepare.dataset_name)


def real_dataset_dir(cfg: FacesynthConfig) -> Path:
    """The real training data: ``train_fr.dataset``, else the prepared dataset."""
    return Path(cfg.train_fr.dataset) if cfg.train_fr.dataset else dataset_dir(cfg, cfg.prepare.dataset_name)


def verify_bins(cfg: FacesynthConfig, explicit: list[str] | None = None) -> list[Path]:
    """``explicit`` (or ``train_fr.verify_bins``), else every ``.bin`` beside the real data; checked to exist."""
    given = explicit if explicit else cfg.train_fr.verify_bins
    bins = [Path(p) for p in given] if given else sorted((real_dataset_dir(cfg).parent / "verify").glob("*.bin"))
    missing = [str(p) for p in bins if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"verification .bin files not found: {missing}")
    return bins


def fr_export_dir(cfg: FacesynthConfig) -> Path:
    return model_dir(cfg, "fr")


def fr_backbone_prefix(cfg: FacesynthConfig) -> Path:
    return fr_export_dir(cfg) / "backbone"


def dit_dataset_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.train_dit.dataset) if cfg.train_dit.dataset else real_dataset_dir(cfg)


def dit_prototypes_prefix(cfg: FacesynthConfig) -> Path:
    return Path(cfg.train_dit.prototypes) if cfg.train_dit.prototypes else fr_export_dir(cfg) / "prototypes"


def dit_backbone_prefix(cfg: FacesynthConfig) -> Path:
    return Path(cfg.train_dit.fr_backbone) if cfg.train_dit.fr_backbone else fr_backbone_prefix(cfg)


def dit_export_dir(cfg: FacesynthConfig) -> Path:
    return model_dir(cfg, "dit")


def generate_model_dir(cfg: FacesynthConfig) -> Path:
    """The generator ``generate`` samples from: ``generate.dit``, else the exported DiT."""
    return Path(cfg.generate.dit) if cfg.generate.dit else dit_export_dir(cfg)


def generate_prototypes_prefix(cfg: FacesynthConfig) -> Path:
    return Path(cfg.generate.prototypes) if cfg.generate.prototypes else dit_prototypes_prefix(cfg)


def generate_out_dir(cfg: FacesynthConfig) -> Path:
    return dataset_dir(cfg, cfg.generate.dataset_name)


def evaluate_reference_dir(cfg: FacesynthConfig) -> Path:
    """``evaluate.reference``, else the real data the generator was trained on (train_dit, then train_fr)."""
    return Path(cfg.evaluate.reference or cfg.train_dit.dataset or real_dataset_dir(cfg))


def evaluator_run_name(cfg: FacesynthConfig) -> str:
    """The run name ``train_evaluator`` trains the independent evaluator under: ``<run.name>-evaluator``."""
    return f"{cfg.run.name}-evaluator"


def evaluator_prefix(cfg: FacesynthConfig) -> Path:
    """The evaluator FR backbone prefix: ``evaluate.evaluator``, else the ``train_evaluator`` export
    ``<output_dir>/fr/<run.name>-evaluator/backbone`` (a model that played no part in the generator)."""
    if cfg.evaluate.evaluator:
        return Path(cfg.evaluate.evaluator)
    return run_root(cfg) / "fr" / evaluator_run_name(cfg) / "backbone"


def evaluate_report_dir(cfg: FacesynthConfig) -> Path:
    """``evaluate/<run.name>``, or ``evaluate/<evaluate.report_name>``: a second evaluation in the same run
    (AugGen's D_repro beside VIGFace's sets) gets its own folder instead of overwriting the first."""
    return run_root(cfg) / "evaluate" / (cfg.evaluate.report_name or cfg.run.name)


def privacy_report_dir(cfg: FacesynthConfig, dataset_name: str) -> Path:
    return evaluate_report_dir(cfg) / f"privacy_{dataset_name}"


def compare_report_dir(cfg: FacesynthConfig) -> Path:
    """``compare/<run.name>``, or ``compare/<compare.report_name>``: a comparison of other settings in the same
    run (e.g. AugGen's real vs real+auggen beside VIGFace's four) gets its own table instead of overwriting."""
    return run_root(cfg) / "compare" / (cfg.compare.report_name or cfg.run.name)


def auggen_model_dir(cfg: FacesynthConfig) -> Path:
    """The AugGen generator: ``auggen.generate.model``, else the ``train_auggen`` export."""
    return Path(cfg.auggen.generate.model) if cfg.auggen.generate.model else model_dir(cfg, "auggen")


def auggen_dataset_dir(cfg: FacesynthConfig) -> Path:
    """Where ``auggen_generate`` writes: ``auggen.generate.dataset_name``, else ``auggen_<which>``."""
    g = cfg.auggen.generate
    return dataset_dir(cfg, g.dataset_name or f"auggen_{g.which}")


def auggen_search_name(cfg: FacesynthConfig) -> str:
    """The search's name: ``auggen.search.report_name``, else ``run.name`` (several searches of one run, e.g.
    at two guidances, each keep their own Tune experiment and report folder)."""
    return cfg.auggen.search.report_name or cfg.run.name


def auggen_search_dir(cfg: FacesynthConfig) -> Path:
    """``auggen_search/<search name>``: the grid's report (``best.json``, which ``auggen_generate`` reads)."""
    return run_root(cfg) / "auggen_search" / auggen_search_name(cfg)


def pipeline_report_dir(cfg: FacesynthConfig) -> Path:
    """The pipeline's stage record (``state.json``) and its summary."""
    return report_dir(cfg, "pipeline")
