"""Config section of the end-to-end ``pipeline`` job; part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("vigface", "auggen", "synthdistill", "gif")


@dataclass
class PipelineSection:
    """Which methods the pipeline runs, per-stage budgets and the ETA estimates of its progress line."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))  # a subset of METHODS
    # key=value overrides per stage name (e.g. {distill: ["distill.epochs=2"]}): the pipeline may run shorter
    # budgets than a method's own preset; the summary names them beside each row
    stage_overrides: dict = field(default_factory=dict)
    # key=value overrides of the GIF FR run on top of compare.fr_overrides (the same FR recipe as compare's rows)
    gif_fr_overrides: list[str] = field(default_factory=lambda: ["train_fr.head=gif"])
    # expected seconds per stage on the reference machine (ETA of the progress line; rescaled by what the
    # stages that ran so far took); a stage missing here counts 60 s
    estimates_s: dict = field(default_factory=dict)
