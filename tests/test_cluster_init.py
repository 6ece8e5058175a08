"""init_ray: a local job always starts its own Ray (stale ray_current_cluster file); cluster.yaml is valid."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster_helpers import REPO, free_port, ray_env, remove_tree, short_tmp, stop_ray_under, write_stale_cluster_file
from ray_jobs import cluster
from ray_jobs.config import RaySection


def _run_probe(root: Path, timeout: float = 120.0) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "cluster_helpers.py"), "probe"], cwd=REPO,
                          env=ray_env(root), capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, f"init_ray failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE "):])


def test_stale_cluster_file_does_not_break_a_local_job():
    """A `ray start --head` killed without `ray stop` leaves <RAY_TMPDIR>/ray/ray_current_cluster behind."""
    root = short_tmp()
    try:
        stale = f"127.0.0.1:{free_port()}"  # nothing listens there: the head is long gone
        path = write_stale_cluster_file(root, stale)
        out = _run_probe(root)
        assert out["answer"] == 42 and out["cpus"] == 1.0
        assert out["gcs_address"] != stale
        assert Path(out["session_dir"]).resolve().is_relative_to((root / "ray").resolve())  # its own new Ray
        assert path.read_text() == stale  # the file is left as it was (it may be someone's live head)
    finally:
        stop_ray_under(root)
        remove_tree(root)


class _FakeRay:
    def __init__(self):
        self.calls = []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(kwargs)


@pytest.fixture()
def fake_ray(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setattr(cluster.ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(cluster.ray, "init", fake.init)
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(cluster, "_state", {"local_without_dashboard": False})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return fake


@pytest.mark.parametrize("address, env, expected", [
    ("", None, "local"),            # no address anywhere: the job's own local Ray, never the file's cluster
    ("local", None, "local"),
    ("auto", None, "auto"),         # deliberate: join the live local head (ray_current_cluster)
    ("", "auto", "auto"),
    ("", "10.0.0.1:6379", "10.0.0.1:6379"),
    ("ray://head:10001", "10.0.0.1:6379", "ray://head:10001"),  # the config wins over the environment
])
def test_address_choice(fake_ray, monkeypatch, address, env, expected):
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    cluster.init_ray(RaySection(address=address, num_cpus=3, num_gpus=0))
    (call,) = fake_ray.calls
    assert call["address"] == expected
    if expected == "local":
        assert call["num_cpus"] == 3 and call["num_gpus"] == 0
    else:  # joining: the cluster's resources, never num_cpus/num_gpus (Ray refuses them)
        assert "num_cpus" not in call and "num_gpus" not in call


# ------------------------------------------------------------------------------------------------
# cluster.yaml through Ray's own validation (what `ray up` runs before it creates any node)


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation():
    prepared = _validate(_cluster_yaml())
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert types["gpu_8x"]["resources"]["GPU"] == 8 and types["cpu_32"]["resources"]["GPU"] == 0
    assert all("--dashboard-host=127.0.0.1" in c for c in prepared["head_start_ray_commands"] if "--head" in c)


def _unknown_field(c):
    c["available_node_types"]["gpu_8x"]["resourcez"] = c["available_node_types"]["gpu_8x"].pop("resources")


def _missing_head_type(c):
    c["head_node_type"] = "gpu_16x"


def _min_over_max(c):
    c["available_node_types"]["gpu_8x"]["min_workers"] = 20


def _bad_resources(c):
    c["available_node_types"]["gpu_8x"]["resources"]["GPU"] = "eight"


@pytest.mark.parametrize("breaks, error", [
    (_unknown_field, "'resources' is a required property"),
    (_missing_head_type, "head_node_type` must be one of"),
    (_min_over_max, "smaller than the sum of `min_workers`"),
    (_bad_resources, "'eight' is not of type 'integer'"),
])
def test_broken_cluster_yaml_fails_ray_validation(breaks, error):
    config = _cluster_yaml()
    breaks(config)
    with pytest.raises(Exception, match=error):
        _validate(config)
