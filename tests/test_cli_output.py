"""Terminal output (issue 15 part 6): bad input is one line on stderr and exit code 2, a traceback only with
--debug; Ray Train's report dumps stay out of the terminal; progress lines name step, elapsed and ETA.
Two real ``python -m ray_jobs`` runs (each pays the job's imports, a few seconds); the rest in-process."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ray_jobs.__main__ as cli
from fr.data.shards import ShardError
from ray_jobs import train_common
from ray_jobs.config import ConfigError
from ray_jobs.errors import InputError, MissingInputError, is_input_error, one_line
from ray_jobs.progress import ProgressLine, format_duration

REPO = Path(__file__).resolve().parent.parent


def _cli(tmp_path, *args, env=None):
    cmd = [sys.executable, "-m", "ray_jobs", *args, f"run.output_dir={tmp_path}", "mlflow.enabled=false"]
    run_env = {k: v for k, v in os.environ.items() if k != "FACESYNTH_DEBUG"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**run_env, **(env or {})})


def _assert_one_line(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0]


def test_missing_dataset_is_one_line(tmp_path):
    result = _cli(tmp_path, "train_fr", "--config", "configs/tiny.yaml", "train_fr.dataset=/nonexistent")
    _assert_one_line(result, "/nonexistent/dataset.json not found")


def test_bad_guidance_is_one_line_before_ray(tmp_path):
    result = _cli(tmp_path, "generate", "--config", "configs/tiny.yaml", "generate.guidance=-3")
    _assert_one_line(result, "generate.guidance must be in [0, 20.0], got -3.0")
    assert "Started a local Ray" not in result.stderr + result.stdout


def test_main_maps_only_input_errors(monkeypatch, capsys):
    """In-process: config and input errors -> exit 2 and one line; other errors propagate (Python prints their
    traceback, exit 1); --debug or FACESYNTH_DEBUG=1 lets input errors propagate too."""
    monkeypatch.setenv("FACESYNTH_DEBUG", "0")  # restored after the test (--debug below sets it)

    def job(exc):
        def run(cfg):
            raise exc
        return run

    monkeypatch.setitem(cli.JOBS, "prepare", job(MissingInputError("evaluate.evaluator: /x.safetensors not found")))
    assert cli.main(["prepare"]) == 2
    assert capsys.readouterr().err == "error: evaluate.evaluator: /x.safetensors not found\n"
    assert cli.main(["prepare", "no.such_key=1"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown key 'no'")
    monkeypatch.setitem(cli.JOBS, "prepare", job(ValueError("a bug, not bad input")))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["prepare"])
    monkeypatch.setitem(cli.JOBS, "prepare", job(ShardError("bad shard")))
    assert cli.main(["prepare"]) == 2 and capsys.readouterr().err == "error: bad shard\n"
    with pytest.raises(ShardError):
        cli.main(["prepare", "--debug"])
    assert os.environ["FACESYNTH_DEBUG"] == "1"  # for a local Ray's workers too
    monkeypatch.setenv("FACESYNTH_DEBUG", "0")
    with pytest.raises(ShardError):
        with monkeypatch.context() as m:
            m.setenv("FACESYNTH_DEBUG", "1")
            cli.main(["prepare"])


def test_which_errors_are_input_errors():
    import ray.exceptions

    assert is_input_error(InputError("x")) and is_input_error(ConfigError("x")) and is_input_error(ShardError("x"))
    assert not is_input_error(ValueError("x")) and not is_input_error(RuntimeError("x"))
    remote = ray.exceptions.RayTaskError("fn", "Traceback ...", ShardError("in a worker")).as_instanceof_cause()
    assert isinstance(remote, ShardError) and not is_input_error(remote)  # failed during the work: traceback
    assert one_line(InputError("first\n  second\n")) == "error: first; second"


def test_progress_line_has_step_elapsed_and_eta(monkeypatch):
    clock = iter([100.0, 130.0, 130.0])
    monkeypatch.setattr("ray_jobs.progress.time.perf_counter", lambda: next(clock))
    progress = ProgressLine("train_fr", 400, "step", start=100)  # resumed at step 100
    line = train_common.progress_line(progress, 200, {"loss": 3.38272, "lr": 0.1, "images_per_s": 15.18})
    assert line == "train_fr: step 200/400  loss 3.383  15.2 img/s  elapsed 0:30  ETA 1:00  (lr=0.1)"
    assert format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "?"


def test_ray_train_report_logger_is_quieted(monkeypatch):
    import importlib

    monkeypatch.delenv("FACESYNTH_DEBUG", raising=False)
    path = importlib.import_module(train_common.REPORT_LOGGER_MODULE).__file__
    logger = logging.getLogger(path)
    level = logger.level
    try:
        # the module still logs its per-report dump through a logger named by its file (fails if Ray renames it)
        assert "logger = logging.getLogger(__file__)" in Path(path).read_text()
        train_common.quiet_report_logger()
        assert logger.getEffectiveLevel() == logging.WARNING
    finally:
        logger.setLevel(level)


def test_trainer_keeps_ray_train_info_out_of_the_terminal(tmp_path, monkeypatch):
    monkeypatch.delenv("FACESYNTH_DEBUG", raising=False)
    kwargs = dict(name="quiet", storage=tmp_path, num_workers=1, use_gpu=False, cpus_per_worker=1.0)
    trainer = train_common.make_torch_trainer(lambda config: None, {}, **kwargs)
    assert trainer.run_config.logging_config.log_level == "WARNING"
    monkeypatch.setenv("FACESYNTH_DEBUG", "1")
    assert train_common.make_torch_trainer(lambda config: None, {}, **kwargs).run_config.logging_config.log_level == "INFO"
