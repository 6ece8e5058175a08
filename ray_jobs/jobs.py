"""The job registry: name -> function(config). ``pipeline`` runs the end-to-end chain on one config."""
from __future__ import annotations

import logging
from typing import Callable

from ray_jobs.config import FacesynthConfig

log = logging.getLogger(__name__)


def prepare(cfg: FacesynthConfig) -> None:
    from ray_jobs.prepare import run_prepare

    run_prepare(cfg)


def train_fr(cfg: FacesynthConfig) -> None:
    from ray_jobs.train_fr import run_train_fr

    run_train_fr(cfg)


def train_dit(cfg: FacesynthConfig) -> None:
    from ray_jobs.train_dit import run_train_dit

    run_train_dit(cfg)


def generate(cfg: FacesynthConfig) -> None:
    from ray_jobs.generate import run_generate

    run_generate(cfg)


def evaluate(cfg: FacesynthConfig) -> None:
    from ray_jobs.evaluate import run_evaluate

    run_evaluate(cfg)


def compare(cfg: FacesynthConfig) -> None:
    from ray_jobs.compare import run_compare

    run_compare(cfg)


def pipeline(cfg: FacesynthConfig) -> None:
    """Every stage that exists, in order, on one config (the README's main command)."""
    for name in PIPELINE:
        log.info("pipeline: stage %s", name)
        JOBS[name](cfg)


PIPELINE = ["prepare", "train_fr", "train_dit", "generate", "evaluate"]
JOBS: dict[str, Callable[[FacesynthConfig], None]] = {
    "prepare": prepare, "train_fr": train_fr, "train_dit": train_dit, "generate": generate, "evaluate": evaluate,
    "compare": compare, "pipeline": pipeline}
