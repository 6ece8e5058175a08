"""Screenshots of the MLflow UI pages a reviewer opens (``docs/review.md``), taken with headless Chromium.

    python tools/mlflow_screenshots.py --store /tmp/review/mlflow.db [--experiment facesynth-tiny] [--out docs/review]

Starts ``mlflow ui`` on 127.0.0.1 (a free port, one worker) against the SQLite store, waits until it
answers, finds the experiment and the newest run of each job by the runs' ``job`` tag, shoots every page
with ``chromium --headless --screenshot`` (Debian package ``chromium``), and stops the server. Pages whose
run is missing are skipped and named. MLflow's web app is JavaScript: ``--budget`` is the virtual-time
budget (ms) Chromium gives it to render before the shot.

MLflow 3.17's web app keeps a "GenAI / Machine learning" workflow switch per browser (default GenAI,
which lands on the trace overview); the URLs carry ``workflowType=machine_learning`` so that every shot,
like every link in docs/review.md, opens the model-training pages.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ML = "workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: Path, port: int, timeout: float) -> subprocess.Popen:
    """``mlflow ui`` on 127.0.0.1:port; returns once /health answers (RuntimeError with its log otherwise)."""
    log = open(store.parent / "mlflow_ui.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(2)
    stop(proc)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within {timeout:.0f} s; see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def shoot(chromium: str, url: str, png: Path, budget_ms: int, size: str) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", url],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    print(f"{png}  <-  {url}")


def newest_runs(store: Path, experiment: str) -> tuple[str, dict[str, object]]:
    """(experiment id, {job tag: newest top-level run}); nested runs are listed under ``<job>#child``."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"{store}: no experiment {experiment!r} (populate it first: docs/review.md)")
    runs: dict[str, object] = {}
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000):
        key = run.data.tags.get("job", "trial")
        if "mlflow.parentRunId" in run.data.tags:
            key += "#child"
        runs[key] = run  # ascending start time: the newest wins
    return exp.experiment_id, runs


TALL = "1700,1800"  # metric-chart pages: room for several chart groups


def pages(exp_id: str, runs: dict[str, object]) -> list[tuple[str, str | None, str | None]]:
    """(png name, URL fragment or None when its run is missing, window size or None for the default) of
    every shot in docs/review.md."""
    mixed_png = "auggen_generate"  # the figure's name carries alpha/beta: find it in the run's artifacts
    if "auggen_generate_mixed" in runs:
        import mlflow

        listed = mlflow.MlflowClient().list_artifacts(runs["auggen_generate_mixed"].info.run_id, "auggen_generate")
        mixed_png = next((a.path for a in listed if "mixed_classes" in a.path), mixed_png)

    def run_url(job: str, tab: str) -> str | None:
        run = runs.get(job)
        return None if run is None else f"#/experiments/{exp_id}/runs/{run.info.run_id}/{tab}?{ML}"

    return [
        ("01_experiments.png", f"#/experiments?{ML}", None),
        ("02_runs_table.png", f"#/experiments/{exp_id}/runs?{ML}", None),
        ("03_first_visit.png", f"#/experiments/{exp_id}", None),  # no switch: the browser default
        ("10_train_auggen_metrics.png", run_url("train_auggen", "model-metrics"), TALL),
        ("11_train_auggen_samples.png", run_url("train_auggen", "artifacts/samples/samples_step00000040.png"), None),
        ("12_auggen_search_parent.png", run_url("auggen_search", "overview"), None),
        ("13_auggen_search_heatmap.png", run_url("auggen_search", "artifacts/auggen_search/heatmap.png"), None),
        ("14_auggen_generate_mixed.png", run_url("auggen_generate_mixed", f"artifacts/{mixed_png}"), None),
        ("20_distill_metrics.png", run_url("distill", "model-metrics"), TALL),
        ("21_distill_accuracy.png", run_url("distill", "artifacts/distill_model/accuracy_over_steps.png"), None),
        ("22_distill_sweep_parent.png", run_url("distill_sweep", "overview"), None),
        ("30_build_codes_metrics.png", run_url("build_codes", "model-metrics"), TALL),
        ("31_build_codes_usage.png", run_url("build_codes", "artifacts/codes/code_usage.png"), None),
        ("32_gif_collapse.png", run_url("gif_collapse", "artifacts/gif_collapse/minority_collapse.png"), None),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="the SQLite file (mlflow.db) the jobs logged into")
    ap.add_argument("--experiment", default="facesynth-tiny")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "review")
    ap.add_argument("--budget", type=int, default=20000, help="Chromium virtual-time budget per page, ms")
    ap.add_argument("--size", default="1700,1000", help="window size W,H")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for mlflow ui to answer")
    ap.add_argument("--only", nargs="*", default=None, help="png names to (re)take; default all")
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    store = args.store.resolve()
    if not store.is_file():
        raise SystemExit(f"{store}: no such SQLite store")
    exp_id, runs = newest_runs(store, args.experiment)
    port = free_port()
    proc = start_ui(store, port, args.timeout)
    skipped = []
    try:
        for name, fragment, size in pages(exp_id, runs):
            if args.only and name not in args.only:
                continue
            if fragment is None:
                skipped.append(name)
                continue
            shoot(chromium, f"http://127.0.0.1:{port}/{fragment}", args.out / name, args.budget, size or args.size)
    finally:
        stop(proc)
    if skipped:
        print("skipped (no run of that job in the store):", ", ".join(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
