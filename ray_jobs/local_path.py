"""Which way batch inference runs: in this process, or through Ray Data (issue 15, part 4).

Ray Data's streaming executor pays a fixed start-up per pass (actor pool, per-block scheduling: 3-5 s
on the quiet 2-vCPU VM, 20-30 s when it is loaded, where a plain loop embeds 2000 toy faces in ~2 s;
docs/ux_notes.md). On a
cluster that buys placement on many GPUs; on the machine Ray itself runs on, an actor does the same
work the driver could do. So the embedding pass (``ray_jobs.embedding_pass``) and generation
(``ray_jobs.shard_stream``) run in the driver when ``ray.fast_local`` says so:

- ``never``: always Ray Data. ``always``: always in the driver (also on a cluster: for debugging).
- ``auto`` (the default): in the driver when Ray is local (this process starts, or started, its own
  Ray: no ``ray.address`` / ``RAY_ADDRESS``, or ``local``) and either the job asks for one actor
  (a pool of one has nothing to run in parallel, only its start-up to pay) or the work is at most
  ``LOCAL_MAX_ROWS[work]`` rows, below which even a pool of several local actors cannot make up for
  its start-up (the bench behind the figures: ``bench/local_fast_path.py``). A cluster always gets
  Ray Data.

Both ways run the same per-batch callable over the same batches, with as many torch threads as one
actor gets (:func:`torch_threads`), so their outputs are identical bit for bit
(``tests/test_local_fast_path.py``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

from ray_jobs.cluster import local_without_dashboard
from ray_jobs.config import ConfigError, RaySection

log = logging.getLogger(__name__)
FAST_LOCAL_MODES = ("auto", "always", "never")
# rows at or below which `auto` stays in the driver even when a job asks for several local actors: the rows
# the driver handles in the time Ray Data's per-pass overhead takes, so no local pool can finish sooner.
# bench/local_fast_path.py on the quiet 2-vCPU VM: overhead 3.0 s = 3358 rows of toy embedding, 5.3 s = 250
# rows of tiny-DiT generation (8 steps); under load the overhead was 20-30 s (docs/ux_notes.md)
LOCAL_MAX_ROWS = {"embedding": 3000, "generation": 250}


@dataclass(frozen=True)
class PathChoice:
    in_process: bool
    reason: str

    @property
    def name(self) -> str:
        return "in-process" if self.in_process else "Ray Data"


def ray_is_local(cfg: RaySection) -> bool:
    """True when the Ray of this job is (or will be) a local Ray this process starts, not a cluster."""
    if ray.is_initialized():
        return local_without_dashboard()
    return (cfg.address or os.environ.get("RAY_ADDRESS", "")) in ("", "local")


def choose_path(cfg: RaySection, work: str, rows: int, actors: int) -> PathChoice:
    """In the driver or through Ray Data, for ``rows`` rows of ``work`` (a key of ``LOCAL_MAX_ROWS``) that
    the job would run on ``actors`` actors; the reason is logged by the caller."""
    mode = cfg.fast_local
    if mode not in FAST_LOCAL_MODES:
        raise ConfigError(f"ray.fast_local must be one of {'|'.join(FAST_LOCAL_MODES)}, got {mode!r}")
    if mode != "auto":
        return PathChoice(mode == "always", f"ray.fast_local={mode}")
    if not ray_is_local(cfg):
        return PathChoice(False, "Ray is a cluster")
    if actors <= 1:
        return PathChoice(True, "Ray is local and the job asks for one actor")
    limit = LOCAL_MAX_ROWS[work]
    if rows <= limit:
        return PathChoice(True, f"Ray is local and {rows} rows <= {limit}")
    return PathChoice(False, f"Ray is local but {rows} rows > {limit} on {actors} actors")


@contextmanager
def torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count afterwards: an in-process callable sets it as its actor would."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the driver keeps no cached GPU memory from the pass
