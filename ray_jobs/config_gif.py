"""Config section of GIF identity codes (build_codes); part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GifSection:
    pass
