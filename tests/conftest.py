import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs, token auth as by default)."""
    import ray

    from ray_jobs.cluster import init_ray
    from ray_jobs.config import RaySection

    init_ray(RaySection(num_cpus=2, num_gpus=0))
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
