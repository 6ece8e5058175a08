"""Config section of SynthDistill (distill, distill_sweep); part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillSection:
    pass
