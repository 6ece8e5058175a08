"""The one tracking helper: every job is an MLflow run (SQLite store by default)."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ray_jobs.config import FacesynthConfig, flatten, to_dict

log = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///mlflow.db"


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


def _ensure_experiment(uri: str, name: str) -> None:
    """Select the experiment; a new one on a SQLite store keeps its artifacts in ``mlartifacts/`` beside
    the database file (not in ``./mlruns`` of whatever directory the job ran in)."""
    import mlflow

    if mlflow.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        try:
            mlflow.create_experiment(name, artifact_location=(db.parent / "mlartifacts").as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another process
    mlflow.set_experiment(name)


@contextlib.contextmanager
def mlflow_run(cfg: FacesynthConfig, job: str) -> Iterator[Tracker]:
    """Start an MLflow run named ``<run.name>-<job>`` with the resolved config as params."""
    if not cfg.mlflow.enabled:
        yield Tracker(None)
        return
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    _ensure_experiment(uri, cfg.mlflow.experiment)
    # a job started inside another job's run (compare -> train_fr) becomes its nested child run
    with mlflow.start_run(run_name=f"{cfg.run.name}-{job}", nested=mlflow.active_run() is not None) as run:
        params = {k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()}
        mlflow.log_params(params)
        mlflow.set_tags({"job": job, "run_name": cfg.run.name})
        mlflow.log_dict(to_dict(cfg), "config.json")
        tracker = Tracker(run)
        log.info("MLflow run %s (%s) at %s", run.info.run_id, job, tracking_uri(cfg))
        yield tracker
