"""``train_evaluator``: the independent evaluator every generator measurement uses.

An FR model that plays no part in training, conditioning or selecting a generator: ``train_fr`` on the
same real data with ``evaluate.evaluator_overrides`` (by default another architecture, margin and seed
than stage 1, no virtual prototypes), run under the name ``<run.name>-evaluator`` so it exports to
``<output_dir>/fr/<run.name>-evaluator/backbone`` (``layout.evaluator_prefix``), the default
``evaluate.evaluator`` of ``evaluate``, the privacy check and the fidelity benches.
"""
from __future__ import annotations

import logging
from typing import Any

from ray_jobs import layout
from ray_jobs.config import FacesynthConfig, with_overrides
from ray_jobs.jobs import JOBS

log = logging.getLogger(__name__)


def evaluator_config(cfg: FacesynthConfig) -> FacesynthConfig:
    """The ``train_fr`` config of the evaluator; ValueError when it would be the stage-1 recipe again."""
    overrides = [o for o in cfg.evaluate.evaluator_overrides if not o.startswith("run.name=")]
    sub = with_overrides(cfg, [*overrides, f"run.name={layout.evaluator_run_name(cfg)}"])
    same = [k for k in ("backbone", "backbone_kwargs", "margin") if getattr(sub.train_fr, k) == getattr(cfg.train_fr, k)]
    if len(same) == 3 and sub.run.seed == cfg.run.seed:
        raise ValueError("evaluate.evaluator_overrides: the evaluator would repeat stage 1's backbone, margin and "
                         "seed; give it another train_fr.backbone (or margin) and run.seed")
    return sub


def run_train_evaluator(cfg: FacesynthConfig) -> dict[str, Any]:
    """Train (or resume) the evaluator; returns ``train_fr``'s result (export paths, verification metrics)."""
    if cfg.evaluate.evaluator:
        log.warning("train_evaluator: evaluate.evaluator is set (%s); the model trained here goes to %s and is "
                    "used only where evaluate.evaluator is empty", cfg.evaluate.evaluator,
                    layout.fr_backbone_prefix(evaluator_config(cfg)))
    sub = evaluator_config(cfg)
    log.info("train_evaluator: %s (%s, seed %d) into %s", sub.train_fr.backbone, sub.train_fr.margin, sub.run.seed,
             layout.fr_export_dir(sub))
    return JOBS["train_fr"](sub)
