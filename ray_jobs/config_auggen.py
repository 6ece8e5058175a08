"""Config section of AugGen (train_auggen, auggen_generate, auggen_search, ...); part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AugGenSection:
    pass
