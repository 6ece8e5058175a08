"""Helpers for tests that start Ray processes of their own (a head, a 2-node cluster, a probe).

Each such Ray lives under its own short temp root (``RAY_TMPDIR``; Unix socket paths must stay short)
and is stopped by :func:`stop_ray_under`, which ends only the processes whose command line names that
root: never ``ray stop``, which ends every Ray on the machine (the test session's, other people's).

``python tests/cluster_helpers.py probe`` is what a local job does first (``init_ray`` with no address),
then one task; it prints the started Ray's GCS address and session dir as one JSON line.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


def short_tmp(prefix: str = "fsray-") -> Path:
    """A new directory directly under /tmp (socket paths under pytest's tmp_path get too long)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess whose Ray lives under ``root`` and imports this repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env["RAY_TMPDIR"] = str(root)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)] + [p for p in [env.get("PYTHONPATH", "")] if p])
    env.update(extra)
    return env


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def processes_under(root: Path) -> list[int]:
    """Pids whose command line mentions ``root`` (a Ray started with RAY_TMPDIR/--temp-dir there).

    Read from /proc (Linux; psutil is not a dependency here). This process and its ancestors (a shell
    whose command names the root) are never included.
    """
    key, mine, skip = str(root).encode(), [], _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            if key in (entry / "cmdline").read_bytes():
                mine.append(int(entry.name))
        except OSError:
            continue
    return mine


def _signal_all(pids: list[int], sig: int) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            alive.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def stop_ray_under(root: Path, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, every process of the Ray under ``root``; returns how many there were."""
    pids = processes_under(root)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and set(pids) & set(processes_under(root)):
        time.sleep(0.2)
    _signal_all(list(set(pids) | set(processes_under(root))), signal.SIGKILL)
    return len(pids)


def remove_tree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def write_stale_cluster_file(root: Path, address: str) -> Path:
    """What a ``ray start --head`` that never got its ``ray stop`` leaves in Ray's temp dir."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(str(root / "ray")))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(address)
    return path


def probe() -> None:
    import ray

    from ray_jobs.cluster import init_ray
    from ray_jobs.config import RaySection

    t0 = time.perf_counter()
    resources = init_ray(RaySection(num_cpus=1, num_gpus=0))
    answer = ray.get(ray.remote(lambda: 41 + 1).options(num_cpus=0.1).remote())
    ctx = ray.get_runtime_context()
    out = {"gcs_address": ctx.gcs_address, "session_dir": ray._private.worker.global_worker.node.get_session_dir_path(),
           "cpus": resources.get("CPU"), "answer": answer, "seconds": round(time.perf_counter() - t0, 1)}
    ray.shutdown()
    print("PROBE " + json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["probe"]:
        probe()
    else:
        raise SystemExit(f"usage: {sys.argv[0]} probe")
