"""Ray Train wiring shared by the training jobs: the TorchTrainer set-up, rank-0 MLflow logging from
workers, and the tracking URI the workers can reach."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_jobs.cluster import local_without_dashboard

PG_CLEANER_CALLBACK = "PlacementGroupCleanerCallback"


@dataclass
class WorkerContext:
    cfg: Any
    rank: int
    world: int
    device: Any  # torch.device
    logger: "WorkerMetricsLogger"


def worker_context(loop_config: dict[str, Any], section: str) -> WorkerContext:
    """Inside a Ray Train worker: the config, rank, world size, device (GPU if ``cfg.<section>.use_gpu``),
    seeded torch and the rank-0 MLflow logger."""
    import ray.train
    import ray.train.torch
    import torch

    from ray_jobs.config import from_dict

    cfg = from_dict(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if getattr(cfg, section).use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    logger = WorkerMetricsLogger(loop_config["tracking_uri"], loop_config["run_id"], rank == 0 and cfg.mlflow.enabled)
    return WorkerContext(cfg, rank, world, device, logger)


class LocalTorchTrainer(TorchTrainer):
    """``TorchTrainer`` without Ray Train's placement-group cleaner, for a local Ray without dashboard.

    The cleaner is a detached actor that asks the State API once a second whether the controller is
    still alive; the State API is served by the dashboard, so without it every query fails, the
    cleaner logs a warning each second for the whole run and can never act (a local Ray's placement
    groups go with the driver anyway). Overriding the private ``_create_default_callbacks`` is the
    only switch Ray offers; ``tests/test_train_common.py`` fails if a Ray upgrade moves it.
    """

    def _create_default_callbacks(self):
        return [cb for cb in super()._create_default_callbacks() if type(cb).__name__ != PG_CLEANER_CALLBACK]


def make_torch_trainer(loop: Callable[[dict], None], loop_config: dict[str, Any], *, name: str, storage: Path,
                       num_workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int = 0,
                       keep_checkpoints: int = 1) -> TorchTrainer:
    """A TorchTrainer whose run ``name`` under ``storage`` is the resume key (rerun = resume)."""
    trainer_cls = LocalTorchTrainer if local_without_dashboard() else TorchTrainer
    return trainer_cls(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)),
    )


class WorkerMetricsLogger:
    """Rank-0 metric logging into the driver's MLflow run (MlflowClient, no global state)."""

    def __init__(self, uri: str, run_id: str | None, enabled: bool):
        self.client = None
        self.run_id = run_id
        if enabled and run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(uri)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()
                                                   if v is not None and np.isfinite(v)])

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        if self.client is not None:
            self.client.log_artifact(self.run_id, str(path), subdir)


def absolute_uri(uri: str) -> str:
    """Workers run in other directories: make a relative sqlite path absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri
