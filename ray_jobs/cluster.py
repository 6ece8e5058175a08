"""The one Ray bootstrap: join ``RAY_ADDRESS`` (or ``ray.address``) if set, else start a local Ray.

A plain ``ray.init()`` without an address joins whatever cluster Ray's temp directory names in its
``ray_current_cluster`` file (the last ``ray start --head`` on this machine, live or long dead), where
passing ``num_cpus`` then fails ("When connecting to an existing cluster, num_cpus and num_gpus must not
be provided"). So a local job always starts its own Ray with ``address="local"``; joining the live local
head is deliberate: ``ray.address=auto`` (or ``RAY_ADDRESS=auto``), or its address.
"""
from __future__ import annotations

import logging
import os
import sys

import ray

from ray_jobs.config import RaySection

log = logging.getLogger(__name__)

# Ray Train services that serve a cluster and only cost CPU on a single machine without the dashboard:
# the preemption watcher (polls for node draining, which a laptop never does) and the Prometheus
# metrics callbacks (exported through the dashboard agent, which nobody scrapes locally). Each idle
# Ray actor costs ~1% of a core (measured, docs/benchmarks.md): on 2 cores that is felt by training.
#
# OpenMP waiting is left at libgomp's default (spin, then sleep). OMP_WAIT_POLICY=PASSIVE raised an
# IResNet-50 step on both cores of a 2-vCPU VM from 0.947 to 0.968 of the bare process's throughput
# inside Ray Train (the spinning partner of a descheduled thread wastes CPU that Ray's daemons need)
# but made the tiny preset's small model ~7% slower (a futex wake-up per parallel region):
# docs/benchmarks.md. Whoever wants it exports it before starting a job; a local Ray's workers
# inherit the driver's environment.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
_state = {"local_without_dashboard": False}


def local_without_dashboard() -> bool:
    """True when this process started a local Ray without the dashboard (so no State API)."""
    return _state["local_without_dashboard"] and ray.is_initialized()


def init_ray(cfg: RaySection) -> dict:
    """Connect to (or start) Ray; returns the cluster resources. Token auth stays on (Ray's default)."""
    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address and address != "local":
        # joining a cluster: resources are the cluster's, never pass num_cpus/num_gpus
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": never the cluster a stale/live ray_current_cluster file names (module docstring)
        kwargs: dict = {"address": "local", "num_cpus": cfg.num_cpus or os.cpu_count() or 1,
                        "include_dashboard": False}
        if cfg.num_gpus >= 0:
            kwargs["num_gpus"] = cfg.num_gpus
        for key, value in LOCAL_TRAIN_ENV.items():  # inherited by the raylet's workers; a user's setting wins
            os.environ.setdefault(key, value)
        ray.init(**kwargs)
        _state["local_without_dashboard"] = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stdout.isatty()
    resources = ray.cluster_resources()
    log.info("Ray resources: %s", resources)
    return resources
