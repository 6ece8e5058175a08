"""The job registry: name -> function(config). ``pipeline`` (``ray_jobs.pipeline``) runs every method's stages.

Each job's module is imported only when the job runs, so the CLI starts fast and a job never pays
for another's imports.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from ray_jobs.config import FacesynthConfig

# job name -> (module in ray_jobs, function taking the config)
_JOB_TARGETS = {
    "prepare": ("prepare", "run_prepare"),
    "train_fr": ("train_fr", "run_train_fr"),
    "train_evaluator": ("train_evaluator", "run_train_evaluator"),
    "train_dit": ("train_dit", "run_train_dit"),
    "generate": ("generate", "run_generate"),
    "evaluate": ("evaluate", "run_evaluate"),
    "compare": ("compare", "run_compare"),
    "build_codes": ("build_codes", "run_build_codes"),
    "gif_collapse": ("build_codes", "run_gif_collapse"),
    "distill": ("distill", "run_distill"),
    "distill_sweep": ("distill_sweep", "run_distill_sweep"),
    "train_auggen": ("train_auggen", "run_train_auggen"),
    "auggen_generate": ("auggen_generate", "run_auggen_generate"),
    "auggen_search": ("auggen_search", "run_auggen_search"),
    "pipeline": ("pipeline", "pipeline"),
}


def _lazy(module: str, function: str) -> Callable[[FacesynthConfig], Any]:
    def run(cfg: FacesynthConfig) -> Any:
        return getattr(importlib.import_module(f"ray_jobs.{module}"), function)(cfg)

    run.__name__ = function
    return run


JOBS: dict[str, Callable[[FacesynthConfig], Any]] = {name: _lazy(*target) for name, target in _JOB_TARGETS.items()}
