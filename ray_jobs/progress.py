"""One progress line per log interval: ``<job>: <unit> n/N  <fields>  elapsed m:ss  ETA m:ss``.

Used by the training loop skeleton (``ray_jobs.train_common``: step n/N, loss, img/s), the shard stream
of generation and the embedding pass (shards or rows n/N, img/s). The ETA is the remaining work at the
average pace of this run so far (checkpoint and evaluation pauses included), so it settles after the
first intervals; it counts only work done in this run (a resumed run starts its clock at its resume point).
"""
from __future__ import annotations

import math
import time


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_value(value: float) -> str:
    """Four significant digits, no exponent for ordinary magnitudes."""
    return f"{value:.4g}"


class ProgressLine:
    """Formats progress lines for ``total`` units of work, of which ``start`` were done before this run."""

    def __init__(self, job: str, total: int, unit: str, start: int = 0, every_s: float = 0.0):
        self.job, self.total, self.unit, self.start = job, int(total), unit, int(start)
        self.every_s = every_s  # :meth:`due` at most this often (streams of many small pieces)
        self.t0 = self._last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self, done: int) -> float:
        """Units per second in this run so far."""
        return (done - self.start) / max(self.elapsed(), 1e-9)

    def due(self, done: int) -> bool:
        """Time for a line: ``every_s`` passed since the last one, or the work is complete."""
        now = time.perf_counter()
        if done >= self.total or now - self._last >= self.every_s:
            self._last = now
            return True
        return False

    def eta(self, done: int) -> float:
        """Seconds left at this run's average pace (NaN before the first unit)."""
        progressed = done - self.start
        if progressed <= 0:
            return math.nan
        return (self.total - done) * self.elapsed() / progressed

    def __call__(self, done: int, *fields: str) -> str:
        parts = [f"{self.job}: {self.unit} {done}/{self.total}", *fields,
                 f"elapsed {format_duration(self.elapsed())}", f"ETA {format_duration(self.eta(done))}"]
        return "  ".join(parts)
