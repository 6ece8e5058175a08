"""Multi-node on one machine: train_fr on a 2-node local cluster, killed, resumed on 1 node (multinode_run.py)."""
import json
import subprocess
import sys

import pytest

from cluster_helpers import REPO, ray_env, remove_tree, short_tmp, stop_ray_under
from ray_jobs.cluster import LOCAL_TRAIN_ENV

pytestmark = pytest.mark.slow


# one machine plays 2 nodes: Ray Train's default 60 s for a worker group to start is short on a loaded box
ENV = dict(LOCAL_TRAIN_ENV, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300")


def test_train_fr_two_nodes_killed_then_resumed_on_one_node():
    root = short_tmp()
    try:
        try:
            proc = subprocess.run([sys.executable, str(REPO / "tests" / "multinode_run.py"), str(root / "work")],
                                  cwd=REPO, env=ray_env(root, **ENV), capture_output=True, text=True,
                                  timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"multinode_run.py timed out:\n{(exc.stderr or b'')[-6000:].decode(errors='replace')}")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        r = json.loads(lines[-1][len("RESULT "):])
    finally:
        stop_ray_under(root)
        remove_tree(root)
    print(json.dumps(r["timings"]))
    # 2 one-CPU nodes; the 2-worker runs put one worker on each (1 CPU per worker)
    assert r["nodes_alive_at_start"] == 2 and r["nodes_alive_after_removal"] == 1
    assert len(r["killed_worker_nodes"]) == 2 and len(r["all_worker_nodes"]) == 2
    # the kill: rank 0 raised at step 3, no retry; the step-2 checkpoint is what is left
    assert r["killed_error"] and r["killed_by_fault_injection"] and r["fault_marker"], r["killed_error"]
    assert r["killed_checkpoints"] and r["killed_checkpoints"] == sorted(r["killed_checkpoints"])
    # the resume on the one node left: from the 2-worker step-2 checkpoint to step 4 on 1 worker
    (resume,) = r["killed_resumes"]
    assert resume["step"] == 2 and resume["saved_world_size"] == 2 and resume["world_size"] == 1
    (ref_resume,) = r["ref_resumes"]
    assert ref_resume["step"] == 2 and ref_resume["saved_world_size"] == 2
    assert ref_resume["head_weight_sha1"] == resume["head_weight_sha1"]  # same state at the step-2 hand-over
    assert r["killed_step"] == r["ref_step"] == 4
    # same world-size schedule as the uninterrupted reference -> bitwise the same head and backbone
    assert {"head", "net"} <= set(r["files"])
    assert r["equal"] and all(r["equal"].values()), {k: r["max_abs_diff"].get(k) for k, v in r["equal"].items() if not v}
