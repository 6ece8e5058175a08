"""The one Ray bootstrap: join ``RAY_ADDRESS`` (or ``ray.address``) if set, else start a local Ray."""
from __future__ import annotations

import logging
import os
import sys

import ray

from ray_jobs.config import RaySection

log = logging.getLogger(__name__)


def init_ray(cfg: RaySection) -> dict:
    """Connect to (or start) Ray; returns the cluster resources. Token auth stays on (Ray's default)."""
    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        # joining a cluster: resources are the cluster's, never pass num_cpus/num_gpus
        ray.init(address=address, log_to_driver=True)
    else:
        kwargs: dict = {"num_cpus": cfg.num_cpus or os.cpu_count() or 1, "include_dashboard": False}
        if cfg.num_gpus >= 0:
            kwargs["num_gpus"] = cfg.num_gpus
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stdout.isatty()
    resources = ray.cluster_resources()
    log.info("Ray resources: %s", resources)
    return resources
