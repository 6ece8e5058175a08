"""`ray job submit` for real: a local head with token auth, one job by the CLI, one by JobSubmissionClient.

The head lives under its own short temp root (RAY_TMPDIR, its own ports, its own token file) and is
stopped by ending only its own processes (tests/cluster_helpers.py): never `ray stop`, which would end
the test session's Ray and everybody else's. The commands run are :data:`COMMANDS`, the README's cluster
section shows them with Ray's default ports and ``/tmp/facesynth-job`` (``test_readme_shows_the_commands``).
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster_helpers import REPO, free_port, ray_env, remove_tree, short_tmp, stop_ray_under

# the tiny prepare job both submissions run (24 toy identities: a few seconds of work)
JOB_ARGS = ("prepare --config configs/tiny.yaml run.output_dir={out}/{name} run.name={name} "
            "prepare.toy.num_identities=24 prepare.toy.min_images=3 prepare.toy.max_images=6 "
            "prepare.toy.verify_identities=8 prepare.toy.verify_pairs=40 prepare.num_tasks=2")
ENV_JSON = '{{"env_vars": {{"MLFLOW_TRACKING_URI": "sqlite:///{out}/{db}"}}}}'
COMMANDS = {
    "token": "ray get-auth-token --generate",
    "head": ("RAY_AUTH_MODE=token ray start --head --num-cpus=2 --num-gpus=0 --port={port} "
             "--dashboard-host=127.0.0.1 --dashboard-port={dashboard_port} "
             "--dashboard-agent-listen-port={agent_port} --ray-client-server-port={client_port}"),
    "submit": ("RAY_AUTH_MODE=token ray job submit --address=http://127.0.0.1:{dashboard_port} --working-dir . "
               "--runtime-env-json='" + ENV_JSON + "' -- python -m ray_jobs " + JOB_ARGS.replace("{name}", "cli")),
}
README_VALUES = {"port": 6379, "dashboard_port": 8265, "agent_port": 52365, "client_port": 10001,
                 "out": "/tmp/facesynth-job", "db": "mlflow.db"}


def _shell(cmd: str, env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def head():
    """A token-auth head on free ports under its own temp root; yields its details, always stopped."""
    root = short_tmp()
    try:
        bin_dir = str(Path(sys.executable).parent)
        values = {"port": free_port(), "dashboard_port": free_port(), "agent_port": free_port(),
                  "client_port": free_port(), "out": str(root / "out"), "db": "mlflow.db"}
        home = root / "home"  # `ray get-auth-token --generate` writes <HOME>/.ray/auth_token
        token_path = home / ".ray" / "auth_token"
        env = ray_env(root, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
                      RAY_AUTH_TOKEN_PATH=str(token_path))
        env.pop("RAY_AUTH_TOKEN", None)
        token_env = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}  # it must not name a missing file
        done = _shell(COMMANDS["token"].format(**values), dict(token_env, HOME=str(home)), 60)
        assert done.returncode == 0 and token_path.is_file(), done.stderr
        done = _shell(COMMANDS["head"].format(**values), env, 240)
        assert done.returncode == 0, f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        yield {"root": root, "env": env, "values": values, "token": token_path.read_text().strip(),
               "url": f"http://127.0.0.1:{values['dashboard_port']}"}
    finally:
        stop_ray_under(root)
        remove_tree(root)


def _http_status(url: str, headers: dict) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait(client, job_id: str, timeout: float = 240.0) -> str:
    from ray.job_submission import JobStatus

    t0 = time.time()
    while time.time() - t0 < timeout:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1.0)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s: {client.get_job_status(job_id)}")


def _check_outputs(out: Path, name: str, run_id_by_name: dict) -> None:
    from fr.data.shards import read_dataset_json
    from ray_jobs import layout
    from ray_jobs.config import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml",
                      JOB_ARGS.format(out=out, name=name).split()[3:])  # the job's overrides
    info = read_dataset_json(layout.prepared_dir(cfg) / "train")
    assert info.num_classes == 24 and 3 * 24 <= info.num_images <= 6 * 24
    run = run_id_by_name[f"{name}-prepare"]
    assert run.info.status == "FINISHED"
    assert run.data.params["prepare.toy.num_identities"] == "24"
    assert run.data.metrics["num_classes"] == 24 and run.data.metrics["num_images"] == info.num_images
    assert info.provenance["mlflow_run_id"] == run.info.run_id


@pytest.mark.slow
def test_job_submit_cli_and_sdk_with_token(head):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    env, values, url, token = head["env"], head["values"], head["url"], head["token"]
    out = Path(values["out"])
    out.mkdir(parents=True, exist_ok=True)
    # a request without the token (or with a wrong one) is refused
    assert _http_status(f"{url}/api/jobs/", {}) in (401, 403)
    assert _http_status(f"{url}/api/jobs/", {"Authorization": "Bearer not-the-token"}) in (401, 403)
    assert _http_status(f"{url}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200

    # 1) the CLI, exactly the README's command (it blocks, streaming the job's log, until the job ends)
    cli = subprocess.Popen(["bash", "-c", COMMANDS["submit"].format(**values)], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # 2) the SDK, at the same time, with the token as a Bearer header (its own MLflow store: two jobs
    #    creating one new SQLite store at once race on its schema)
    client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    # (its entrypoint first checks that the upload left the git history and run folders out: .rayignore)
    sdk_id = client.submit_job(entrypoint="test ! -e .git && test ! -e runs && python -m ray_jobs "
                               + JOB_ARGS.format(out=out, name="sdk"),
                               runtime_env={"working_dir": str(REPO), **json.loads(ENV_JSON.format(out=out, db="sdk.db"))})
    try:
        cli_log, _ = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, cli_log[-4000:]
    cli_id = re.search(r"raysubmit_\w+", cli_log).group(0)
    assert "succeeded" in cli_log.lower()
    status = _wait(client, sdk_id)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(sdk_id)[-4000:]
    assert client.get_job_status(cli_id) == JobStatus.SUCCEEDED

    for name, db in (("cli", "mlflow.db"), ("sdk", "sdk.db")):
        mlflow = MlflowClient(f"sqlite:///{out}/{db}")
        experiment = mlflow.get_experiment_by_name("facesynth-tiny")
        _check_outputs(out, name, {r.info.run_name: r for r in mlflow.search_runs([experiment.experiment_id])})

    # a job's `init_ray` joined the head (RAY_ADDRESS is set for a submitted driver); an unauthenticated
    # SDK client is refused too
    with pytest.raises(Exception, match="(?i)401|403|unauthori|authenticat|token"):
        JobSubmissionClient(url, headers={"Authorization": "Bearer not-the-token"}).list_jobs()


@pytest.mark.slow
def test_local_job_beside_a_live_head_starts_its_own_ray(head):
    """With the head's ray_current_cluster file in place (it is live), a local job still starts its own Ray."""
    from test_cluster_init import _run_probe

    root = head["root"]
    live = (root / "ray" / "ray_current_cluster").read_text().strip()
    assert live.endswith(f":{head['values']['port']}")
    out = _run_probe(root)
    assert out["gcs_address"] != live and out["cpus"] == 1.0 and out["answer"] == 42


def test_readme_shows_the_commands():
    readme = re.sub(r"[ \t]*\\\n[ \t]*", " ", (REPO / "README.md").read_text())  # join `\` continuations
    for key, template in COMMANDS.items():
        command = template.format(**README_VALUES)
        assert command in readme, f"README.md's cluster section lacks the {key} command:\n{command}"
