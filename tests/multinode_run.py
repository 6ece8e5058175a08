"""A 2-node local Ray cluster running ``train_fr``: 2 workers on 2 nodes, a kill, a resume on 1 node.

Run by ``tests/test_multinode.py`` in a subprocess (its own Ray under its own RAY_TMPDIR, so the test
session's Ray is untouched): ``python tests/multinode_run.py <work_dir>``; prints one ``RESULT {json}``
line. The FR config is the kill/resume test's (``tests/test_train_fr_ray._cfg``) with one CPU per worker
and one CPU per node, so the two workers cannot share a node.

Runs, all with shared storage ``<work_dir>/out`` (Ray Train checkpoints, shards):
  killed: 2 workers (one per node), rank 0 dies at step 3 (no retries) -> the step-2 checkpoint is left;
  ref:    2 workers, 2 steps (checkpoint at 2), uninterrupted;
  then the worker node is removed from the cluster, and on the one node left, 1 worker each:
  killed resumes from its step-2 checkpoint to step 4; ref continues from its step 2 to step 4.
Both runs see the same world-size schedule (steps 1-2 on 2 workers, 3-4 on 1), so their final weights
must be bitwise equal.

The cluster has no dashboard, so no State API: like a local Ray without one, the trainer drops Ray
Train's placement-group cleaner (``ray_jobs.train_common.LocalTorchTrainer``), which would otherwise
poll the missing API every second on a 2-core machine and could never act.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cluster_helpers import free_port

STEPS, FAIL_AT = 4, 3


def _final_weights(storage: Path, name: str) -> dict:
    from safetensors.torch import load_file

    ckpts = sorted(p for p in (storage / f"{name}-train_fr").glob("checkpoint_*") if p.is_dir())
    state = json.loads((ckpts[-1] / "state.json").read_text())
    files = {p.stem: load_file(str(p)) for p in ckpts[-1].glob("*.safetensors")}
    return {"state": state, "files": files}


def _train_worker_nodes() -> list[str]:
    import ray

    table = ray._private.state.actors()
    return sorted({a["Address"]["NodeID"] for a in table.values() if "RayTrainWorker" in a["ActorClassName"]})


def main(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from ray_jobs import layout, train_common
    from ray_jobs.prepare import run_prepare
    from ray_jobs.train_fr import run_train_fr
    from test_train_fr_ray import _cfg

    train_common.local_without_dashboard = lambda: True  # see the module docstring
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "dashboard_agent_listen_port": free_port()})
    worker_node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    timings["cluster_start"] = time.perf_counter() - t0
    out = work / "out"
    uri = f"sqlite:///{work / 'mlflow.db'}"

    def cfg(name: str, *extra: str):
        return _cfg(out, uri, f"ray.address={cluster.address}", f"run.name={name}", "train_fr.cpus_per_worker=1",
                    "train_fr.lr_schedule=step", "train_fr.keep_checkpoints=4", "mlflow.enabled=false", *extra)

    def timed(key: str, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            timings[key] = time.perf_counter() - t
            print(f"multinode_run: {key} {timings[key]:.1f} s", file=sys.stderr, flush=True)

    timed("prepare", run_prepare, cfg("killed"))
    result: dict = {"nodes_alive_at_start": len([n for n in ray.nodes() if n["Alive"]])}
    try:
        timed("killed_2w", run_train_fr, cfg("killed", "train_fr.num_workers=2", f"train_fr.max_steps={STEPS}",
                                             f"train_fr.fail_at_step={FAIL_AT}", "train_fr.max_failures=0"))
        result["killed_error"] = None
    except Exception as exc:  # the expected end of the killed run
        result["killed_error"] = f"{type(exc).__name__}: {exc}"[:300]
        result["killed_by_fault_injection"] = "fault injection: worker fails at step" in str(exc)
    result["killed_worker_nodes"] = _train_worker_nodes()
    storage = layout.ray_storage(cfg("killed"))
    result["killed_checkpoints"] = sorted(p.name for p in (storage / "killed-train_fr").glob("checkpoint_*"))
    result["fault_marker"] = (layout.fr_export_dir(cfg("killed")) / f".failed_once_{FAIL_AT}").exists()
    timed("ref_2w", run_train_fr, cfg("ref", "train_fr.num_workers=2", "train_fr.max_steps=2"))
    result["all_worker_nodes"] = _train_worker_nodes()

    t = time.perf_counter()
    cluster.remove_node(worker_node)
    cluster.wait_for_nodes()
    timings["remove_node"] = time.perf_counter() - t
    result["nodes_alive_after_removal"] = len([n for n in ray.nodes() if n["Alive"]])

    resumed = timed("killed_1w", run_train_fr, cfg("killed", "train_fr.num_workers=1", f"train_fr.max_steps={STEPS}"))
    ref = timed("ref_1w", run_train_fr, cfg("ref", "train_fr.num_workers=1", f"train_fr.max_steps={STEPS}"))
    result["killed_resumes"] = resumed["state"]["resumes"]
    result["ref_resumes"] = ref["state"]["resumes"]
    result["killed_step"], result["ref_step"] = resumed["state"]["step"], ref["state"]["step"]

    a, b = _final_weights(storage, "killed"), _final_weights(storage, "ref")
    result["files"] = sorted(a["files"])
    result["equal"], result["max_abs_diff"] = {}, {}
    for stem in sorted(a["files"]):
        for key, ta in a["files"][stem].items():
            tb = b["files"][stem][key]
            name = f"{stem}/{key}"
            result["equal"][name] = bool(ta.shape == tb.shape and (ta == tb).all())
            if ta.is_floating_point():
                result["max_abs_diff"][name] = float((ta.float() - tb.float()).abs().max())
    result["timings"] = {k: round(v, 1) for k, v in timings.items()}
    ray.shutdown()
    cluster.shutdown()
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
