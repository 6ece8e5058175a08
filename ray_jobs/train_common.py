"""Ray Train wiring shared by the training jobs: the TorchTrainer set-up, the worker-loop skeleton
(:func:`run_worker_loop`: resume, checkpoint cadence, non-finite stop, rank-0 logging, fault injection),
rank-0 MLflow logging from workers, and the tracking URI the workers can reach.

A trainer supplies only its step and its state (:class:`TrainerParts`); the skeleton owns the loop.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_jobs.cluster import local_without_dashboard
from ray_jobs.errors import debug_enabled
from ray_jobs.progress import ProgressLine, format_value

PG_CLEANER_CALLBACK = "PlacementGroupCleanerCallback"
# Ray Train's own console lines at INFO (worker group start-up, "Checkpoint successfully created at: ...",
# process-group set-up) are for Ray developers: the terminal shows WARNING and up (failures, restarts,
# hangs) unless --debug / FACESYNTH_DEBUG=1. Its log files under the Ray session keep everything.
RAY_TRAIN_LOG_LEVEL, RAY_TRAIN_DEBUG_LOG_LEVEL = "WARNING", "INFO"
# ray.train.v2 logs "Reporting training result N: TrainingReport(...)" (every metric and the checkpoint path
# of every ray.train.report) at INFO from a worker thread through a logger named by its *file path*, so
# the level above does not reach it; worker_context quiets that logger by name.
REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"
# the metrics a progress line names first; the others follow in brackets
PROGRESS_FIRST = ("loss",)
STOPPED_FILE = "stopped_nonfinite.json"  # written into the export dir when a run stops on non-finite losses
log = logging.getLogger(__name__)


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

    quiet_report_logger()
    cfg = from_dict(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if getattr(cfg, section).use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    logger = WorkerMetricsLogger(loop_config["tracking_uri"], loop_config["run_id"], rank == 0 and cfg.mlflow.enabled)
    return WorkerContext(cfg, rank, world, device, logger)


def quiet_report_logger() -> None:
    """Inside a Ray Train worker: drop the per-report INFO dump (:data:`REPORT_LOGGER_MODULE`) unless debugging."""
    import importlib

    if not debug_enabled():
        path = importlib.import_module(REPORT_LOGGER_MODULE).__file__
        logging.getLogger(path).setLevel(logging.WARNING)


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
                       keep_checkpoints: int = 1, datasets: dict[str, Any] | None = None,
                       dataset_config: Any = None) -> TorchTrainer:
    """A TorchTrainer whose run ``name`` under ``storage`` is the resume key (rerun = resume); ``datasets``
    (Ray Data) reach the workers through ``ray.train.get_dataset_shard`` as ``dataset_config`` assigns them."""
    trainer_cls = LocalTorchTrainer if local_without_dashboard() else TorchTrainer
    extra = {"datasets": datasets, "dataset_config": dataset_config} if datasets else {}
    return trainer_cls(
        loop,
        train_loop_config=loop_config,
        **extra,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                             logging_config=LoggingConfig(RAY_TRAIN_DEBUG_LOG_LEVEL if debug_enabled()
                                                          else RAY_TRAIN_LOG_LEVEL)),
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


# ------------------------------------------------------------------------------------------------
# the worker-loop skeleton


@dataclass
class TrainerParts:
    """What one trainer supplies to :func:`run_worker_loop`; everything else is the skeleton's.

    ``epoch_batches(epoch, start)``: this rank's batches of ``epoch`` from its batch ``start`` on.
    ``step(step, batch)``: one optimisation step; returns metrics (tensors are turned into floats only
    at log steps) and raises ``fr.training.NonFiniteLossError`` to stop the run.
    ``batch_images(batch)``: images in this rank's batch. ``nonfinite_total()``: the step's guard count.
    ``save(dir, state, write)``: called on every rank (it may gather); only ``write`` ranks write files.
    ``load(dir)``: restore on every rank, return the saved state (raise on a mismatch).
    ``state_fields(step)``: extra fields saved in the state. ``on_resume(state)``: extra fields of the
    resume record (every rank, may be collective). ``start(state)``: once on every rank after the resume
    and before the first step (wrap the model in DDP, build the step with the restored counters).
    ``periodic(step, last)``: rank 0 only, e.g. the verification or a sample grid; returns metrics to
    log (its time is not counted in images/s). ``dataset_fingerprint``: the training set's
    ``fr.data.shards.content_fingerprint``, saved in the state; a resume onto a changed dataset is refused.
    """

    total_steps: int
    steps_per_epoch: int
    epoch_batches: Callable[[int, int], Iterable[Any]]
    step: Callable[[int, Any], dict[str, Any]]
    batch_images: Callable[[Any], int]
    save: Callable[[Path, dict, bool], None]
    load: Callable[[Path], dict]
    nonfinite_total: Callable[[], int]
    state_fields: Callable[[int], dict] = field(default=lambda step: {})
    on_resume: Callable[[dict], dict] | None = None
    start: Callable[[dict], None] | None = None
    periodic: Callable[[int, bool], dict | None] | None = None
    dataset_fingerprint: str | None = None


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None}


def resume_state(wc: "WorkerContext", parts: TrainerParts) -> dict[str, Any]:
    """The state of the latest checkpoint of this run (restored into the trainer), or a fresh one."""
    import ray.train

    state: dict[str, Any] = {"step": 0, "nonfinite_total": 0, "images_seen": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return state
    with checkpoint.as_directory() as d:
        state = parts.load(Path(d))
    saved = state.get("dataset_fingerprint")
    if parts.dataset_fingerprint and saved and saved != parts.dataset_fingerprint:
        raise ValueError(f"run {wc.cfg.run.name!r} was checkpointed at step {state['step']} on another version of "
                         f"its training set (the dataset was regenerated or edited since): resuming would mix the "
                         f"two. Use another run.name, or delete the run's folder under ray_train/ to start over.")
    record = {"step": state["step"], "saved_world_size": state.get("world_size"), "world_size": wc.world}
    if parts.on_resume is not None:
        record.update(parts.on_resume(state))
    state.setdefault("resumes", []).append(record)
    log.info("rank %d: resumed from step %d (saved on %s workers, now %d)", wc.rank, state["step"],
             state.get("world_size"), wc.world)
    return state


def _inject_fault(section: Any, step: int, rank: int, export_dir: Path, job: str) -> None:
    """Fault injection for tests: rank 0 raises once at ``<section>.fail_at_step`` (a marker file remembers)."""
    at = getattr(section, "fail_at_step", 0)
    if at and step == at and rank == 0:
        marker = export_dir / f".failed_once_{step}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"fault injection: worker fails at step {step} ({job}.fail_at_step)")


def progress_line(progress: ProgressLine, step: int, metrics: dict[str, float]) -> str:
    """``<job>: step n/N  loss x  y img/s  elapsed  ETA  (other metrics)``."""
    first = [f"{k} {format_value(metrics[k])}" for k in PROGRESS_FIRST if k in metrics]
    rest = " ".join(f"{k}={format_value(v)}" for k, v in metrics.items()
                    if k not in PROGRESS_FIRST and k != "images_per_s")
    line = progress(step, *first, f"{metrics.get('images_per_s', 0.0):.3g} img/s")
    return f"{line}  ({rest})" if rest else line


def run_worker_loop(wc: "WorkerContext", parts: TrainerParts, section: Any, export_dir: str | Path,
                    job: str) -> dict[str, Any]:
    """Run ``parts`` inside a Ray Train worker until ``total_steps``; returns the final state.

    ``section``: the trainer's config section (``log_every``, ``checkpoint_every``, ``fail_at_step``).
    The run resumes from the latest checkpoint, checkpoints every ``checkpoint_every`` steps and at the
    end (every rank calls ``ray.train.report``, rank 0 with the checkpoint), logs on rank 0, and on a
    ``NonFiniteLossError`` writes :data:`STOPPED_FILE` into ``export_dir`` and stops cleanly (the driver
    raises with :func:`raise_if_stopped`; Ray does not retry it).
    """
    import ray.train

    from fr.training import NonFiniteLossError

    export_dir = Path(export_dir)
    rank, world = wc.rank, wc.world
    state = resume_state(wc, parts)
    if parts.start is not None:
        parts.start(state)
    step = state["step"]
    t_log, n_log = time.perf_counter(), 0
    progress = ProgressLine(job, parts.total_steps, "step", start=step)
    metrics: dict[str, float] = {}

    def save(final: bool) -> None:
        state.update(step=step, nonfinite_total=parts.nonfinite_total(), world_size=world, **parts.state_fields(step))
        if parts.dataset_fingerprint:
            state["dataset_fingerprint"] = parts.dataset_fingerprint
        with tempfile.TemporaryDirectory() as tmp:
            parts.save(Path(tmp), dict(state), rank == 0)
            report = dict(metrics, step=step, final=float(final))
            if rank == 0:
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(report)

    while step < parts.total_steps:
        epoch, start = divmod(step, parts.steps_per_epoch)
        for batch in parts.epoch_batches(epoch, start):
            _inject_fault(section, step, rank, export_dir, job)
            try:
                out = parts.step(step, batch)
            except NonFiniteLossError as exc:  # every rank agrees (the step all-reduces finiteness)
                log.error("rank %d: %s", rank, exc)
                if rank == 0:
                    export_dir.mkdir(parents=True, exist_ok=True)
                    (export_dir / STOPPED_FILE).write_text(json.dumps(
                        {"step": step, "nonfinite_total": parts.nonfinite_total(), "message": str(exc)}))
                ray.train.report(dict(metrics, step=step, stopped_nonfinite=1.0))
                return state
            step += 1
            images = parts.batch_images(batch) * world
            n_log += images
            state["images_seen"] = state.get("images_seen", 0) + images
            last = step == parts.total_steps
            if step % section.log_every == 0 or last:
                elapsed = time.perf_counter() - t_log
                metrics = {**_floats(out), "images_per_s": n_log / max(elapsed, 1e-9),
                           "epoch": step / parts.steps_per_epoch, "nonfinite_total": parts.nonfinite_total()}
                t_log, n_log = time.perf_counter(), 0
                if rank == 0:
                    log.info(progress_line(progress, step, metrics))
                    wc.logger.metrics(metrics, step)
            t_pause = time.perf_counter()
            if rank == 0 and parts.periodic is not None:
                extra = parts.periodic(step, last)
                if extra:
                    metrics.update(extra)
                    wc.logger.metrics(extra, step)
            if step % section.checkpoint_every == 0 or last:
                save(final=last)
            t_log += time.perf_counter() - t_pause  # images/s counts training (data + step) time only
            if last:
                break
    return state


# ------------------------------------------------------------------------------------------------
# driver side


def clear_stopped(export_dir: Path) -> None:
    """Remove the marker of an earlier stopped attempt (before a new fit)."""
    (Path(export_dir) / STOPPED_FILE).unlink(missing_ok=True)


def raise_if_stopped(export_dir: Path, result: Any, job: str, max_nonfinite: int, tracker: Any = None) -> None:
    """After ``fit()``: ``NonFiniteLossError`` naming the step and the last good checkpoint if the run stopped."""
    from fr.training import NonFiniteLossError

    stopped = Path(export_dir) / STOPPED_FILE
    if not stopped.exists():
        return
    info = json.loads(stopped.read_text())
    last = result.checkpoint.path if result.checkpoint is not None else "none"
    if tracker is not None:
        tracker.tags({"stopped": "non-finite loss"})
    raise NonFiniteLossError(
        f"{job} stopped at step {info['step']}: {max_nonfinite} non-finite losses in a row "
        f"({info['nonfinite_total']} in all). Last good checkpoint: {last}. Lower {job}.lr or check the data.")


def fit_checked(trainer: Any, export_dir: Path, job: str, max_nonfinite: int, tracker: Any = None) -> tuple[Any, float]:
    """``trainer.fit()``; (the result, wall seconds). Raises if the run stopped on non-finite losses or
    ended without a checkpoint."""
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    raise_if_stopped(export_dir, result, job, max_nonfinite, tracker)
    if result.checkpoint is None:
        raise RuntimeError(f"{job} finished without a checkpoint: {result.error}")
    return result, seconds
