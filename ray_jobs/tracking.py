"""The one tracking helper: every job is an MLflow run (SQLite store by default).

Experiments are created as model-training experiments (tag :data:`EXPERIMENT_KIND_TAG` =
``custom_model_development``); a sweep is a parent run whose trials are nested runs: either runs that a
job opens while the parent is active (``nested``), or, in another process (a Tune trial), runs opened
inside :func:`nested_under` with the parent's id.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ray_jobs.config import FacesynthConfig, flatten, to_dict

log = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///mlflow.db"
# MLflow 3.x: the experiment kind the UI offers (GenAI traces vs. model training); the value is MLflow's
# ExperimentKind.CUSTOM_MODEL_DEVELOPMENT (the web app's "Machine learning" kind, landing on "Runs").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"
_PARENT_RUN: list[str] = []  # set by nested_under(): the parent of runs started with no active run


def tracking_uri(cfg: FacesynthConfig) -> str:
    return cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class Tracker:
    """Thin wrapper so jobs log the same way whether MLflow is enabled or not."""

    def __init__(self, run: Any | None):
        self.run = run
        self.run_id = run.info.run_id if run is not None else None

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        if self.run is None:
            return
        import mlflow

        clean = {k: float(v) for k, v in values.items() if v is not None}
        mlflow.log_metrics(clean, step=step)

    def artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=subdir)

    def json(self, data: Any, name: str) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.log_dict(data, name)

    def tags(self, values: dict[str, str]) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.set_tags(values)

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of metric ``key`` in this run (also those logged by workers)."""
        if self.run is None:
            return []
        import mlflow

        points = mlflow.MlflowClient().get_metric_history(self.run_id, key)
        return sorted((int(m.step), float(m.value)) for m in points)


def ensure_experiment(uri: str, name: str) -> str:
    """Create (or select) the experiment ``name`` as a model-training experiment; returns its id.

    A new one gets the kind tag; an existing one without a kind gets it too (an explicitly set kind is
    kept). On a SQLite store a new experiment keeps its artifacts in ``mlartifacts/`` beside the database
    file (not in ``./mlruns`` of whatever directory the job ran in).
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        try:
            client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


@contextlib.contextmanager
def nested_under(parent_run_id: str | None) -> Iterator[None]:
    """Runs that :func:`mlflow_run` starts inside this block, with no active run in this process, become
    nested runs of ``parent_run_id`` (a sweep's parent, started in the driver; this block runs in a trial
    process). ``None``: no effect."""
    if not parent_run_id:
        yield
        return
    _PARENT_RUN.append(parent_run_id)
    try:
        yield
    finally:
        _PARENT_RUN.pop()


def unfinished_run(uri: str, experiment_id: str, job: str, run_name: str) -> Any | None:
    """The latest top-level run of ``job`` for ``run_name`` if it did not finish (killed, failed, or left
    RUNNING by a driver that died), else None: the run an interrupted training job continues in."""
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs(
        [experiment_id], filter_string=f"tags.job = '{job}' and tags.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if runs and runs[0].info.status != "FINISHED" and PARENT_TAG not in runs[0].data.tags:
        return runs[0]
    return None


def _log_params_on_resume(run: Any, params: dict[str, str]) -> None:
    """MLflow refuses to change a logged param: log the new keys, and name the changed ones (old -> new) in
    the tag ``facesynth.resumed_changes`` so the review page says what the continuation ran with."""
    import mlflow

    old = run.data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in old})
    changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
    resumed = int(run.data.tags.get("facesynth.resumed", "0")) + 1
    mlflow.set_tags({"facesynth.resumed": str(resumed),
                     **({"facesynth.resumed_changes": "; ".join(changed)[:5000]} if changed else {})})


@contextlib.contextmanager
def mlflow_run(cfg: FacesynthConfig, job: str, resume: bool = False) -> Iterator[Tracker]:
    """Start an MLflow run named ``<run.name>-<job>`` with the resolved config as params.

    ``resume`` (the Ray Train jobs, which continue from their checkpoints): continue the latest run of this
    job and run name if it did not finish, so an interrupted run's curve stays in one MLflow run."""
    if not cfg.mlflow.enabled:
        yield Tracker(None)
        return
    import mlflow

    uri = tracking_uri(cfg)
    experiment_id = ensure_experiment(uri, cfg.mlflow.experiment)
    # a job started inside another job's run (compare -> train_fr) becomes its nested child run; one started
    # in a sweep's trial process inside nested_under() a child of the sweep's parent run
    active = mlflow.active_run() is not None
    parent = _PARENT_RUN[-1] if _PARENT_RUN and not active else None
    params = {k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()}
    previous = unfinished_run(uri, experiment_id, job, cfg.run.name) if resume and not active and not parent \
        else None
    start = dict(run_id=previous.info.run_id) if previous else dict(run_name=f"{cfg.run.name}-{job}",
                                                                     nested=active, parent_run_id=parent)
    with mlflow.start_run(**start) as run:
        if previous:
            _log_params_on_resume(previous, params)
            log.info("MLflow: continuing the unfinished run %s of %s", previous.info.run_id, job)
        else:
            mlflow.log_params(params)
        mlflow.set_tags({"job": job, "run_name": cfg.run.name})
        mlflow.log_dict(to_dict(cfg), "config.json")
        tracker = Tracker(run)
        log.info("MLflow run %s (%s) at %s", run.info.run_id, job, tracking_uri(cfg))
        yield tracker
