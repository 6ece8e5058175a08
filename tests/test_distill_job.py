"""The distill job: config checks before work starts, the latent stream, end-to-end on Ray Train with resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.latent_stream import LatentStream
from distill.students import load_student
from distill.teachers import TeacherError
from distill.toy_generator import ToyLatentGenerator
from fr.backbones import build_backbone, save_backbone
from fr.data import toyfaces as tf
from fr.data.binfile import write_bin
from ray_jobs import layout
from ray_jobs.config import load_config


def _setup(tmp_path, emb=32):
    """A random tiny teacher at the stage-1 export path and a small toy verification .bin."""
    torch.manual_seed(0)
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=kd"])
    bb = build_backbone("iresnet_tiny", embedding_size=emb, base_width=4, layers=[1, 1, 1, 1], input_size=32,
                        auto_resize=True)
    save_backbone(bb, layout.fr_backbone_prefix(cfg))
    images, issame = tf.make_verification_pairs(tf.ToyFaceConfig(num_identities=8, image_size=112), 8, 20, seed=0)
    write_bin(tmp_path / "toy_verify.bin", images, issame)
    return tmp_path / "toy_verify.bin"


def _cfg(tmp_path, mlflow_uri, *extra):
    return load_config(None, [
        f"run.output_dir={tmp_path}", "run.name=kd", f"mlflow.tracking_uri={mlflow_uri}",
        f"distill.verify_bins=[{tmp_path / 'toy_verify.bin'}]", "distill.embedding_size=32",
        f"distill.teacher={tmp_path / 'fr' / 'kd' / 'backbone'}",
        "distill.student_input_size=32", "distill.toy_render_size=32", "distill.batch_size=4",
        "distill.iterations_per_epoch=3", "distill.epochs=2", "distill.checkpoint_every=2", "distill.log_every=1",
        "distill.cpus_per_worker=0.5", "distill.sample_grid=2", *extra])


def test_latent_stream_is_a_function_of_seed_and_step():
    gen = ToyLatentGenerator()
    one = LatentStream(gen, 8, world=1, rank=0, seed=3)
    halves = [LatentStream(gen, 8, world=2, rank=r, seed=3) for r in range(2)]
    b5 = one.batch(5)
    torch.testing.assert_close(torch.cat([h.batch(5).z for h in halves]), b5.z)  # any number of workers
    torch.testing.assert_close(one.batch(5).z, b5.z)  # a resumed run: same latents at the same step
    assert not torch.allclose(one.batch(6).z, b5.z)
    assert [b.noise_seed for b in one.steps(4, 6)] == [one.batch(4).noise_seed, one.batch(5).noise_seed]
    with pytest.raises(ValueError, match="does not divide"):
        LatentStream(gen, 6, world=4, rank=0, seed=0)


def test_bad_input_fails_before_work(tmp_path, mlflow_uri):
    from ray_jobs.distill import validate_distill_config

    _setup(tmp_path, emb=32)
    with pytest.raises(TeacherError, match="32-d embeddings.*512-d"):
        validate_distill_config(_cfg(tmp_path, mlflow_uri, "distill.embedding_size=512"))
    with pytest.raises(ValueError, match="unknown sampling mode 'dynamic'"):
        validate_distill_config(_cfg(tmp_path, mlflow_uri, "distill.mode=dynamic"))
    (tmp_path / "net.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match="stylegan2_convert"):
        validate_distill_config(_cfg(tmp_path, mlflow_uri, f"distill.generator={tmp_path / 'net.pkl'}"))
    with pytest.raises(ValueError, match="divide over distill.num_workers"):
        validate_distill_config(_cfg(tmp_path, mlflow_uri, "distill.num_workers=3"))
    with pytest.raises(FileNotFoundError, match="teacher|not found|missing"):
        validate_distill_config(_cfg(tmp_path, mlflow_uri, f"distill.teacher={tmp_path / 'none'}"))


@pytest.mark.slow
def test_distill_end_to_end_with_fault_and_resume(tmp_path, mlflow_uri, ray_local):
    from ray_jobs.distill import run_distill

    _setup(tmp_path)
    # rank 0 dies at step 3; Ray Train restarts from the step-2 checkpoint and continues the same latent stream
    out = run_distill(_cfg(tmp_path, mlflow_uri, "distill.fail_at_step=3", "distill.max_failures=1"))
    state = json.loads((out["export_dir"] / "metrics.json").read_text())["state"]
    assert state["step"] == 6 and [r["step"] for r in state["resumes"]] == [2]
    assert state["images_seen"] == 6 * 2 * 4  # dynamic_w: two batches of 4 per iteration
    summary = out["summary"]
    assert 0 <= summary["teacher_toy_verify_accuracy"] <= 1 and 0 <= summary["student_toy_verify_accuracy"] <= 1
    student = load_student(out["export_dir"] / "student")
    assert student.name == "TinyFaR-C@32px"
    assert np.isfinite(summary["train_seconds"])


@pytest.mark.slow
def test_distill_sweep_two_trials(tmp_path, mlflow_uri, ray_local):
    from ray_jobs.distill_sweep import run_distill_sweep

    _setup(tmp_path)
    cfg = _cfg(tmp_path, mlflow_uri, "distill.sweep.cs=[0.8, 1.5]", "distill.sweep.modes=[dynamic_w]",
               "distill.sweep.seeds=[0]", "distill.sweep.driver_cpus=0.05",
               "distill.sweep.overrides=[distill.epochs=1, distill.iterations_per_epoch=2, distill.sample_grid=0]")
    out = run_distill_sweep(cfg)
    assert out["failed"] == 0 and sorted(r["c"] for r in out["results"]) == [0.8, 1.5]
    assert out["metric"] == "student_toy_verify_accuracy"
    table = (out["report_dir"] / "results.md").read_text()
    assert "| dynamic_w | 0.8 |" in table and "| dynamic_w | 1.5 |" in table
    assert (out["report_dir"] / "accuracy_vs_c.png").stat().st_size > 0
    import mlflow

    runs = mlflow.search_runs(experiment_names=["facesynth"], output_format="list")
    parent = [r for r in runs if r.data.tags.get("job") == "distill_sweep"][0]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) >= 2


def test_sweep_paths_are_made_absolute_for_tune_trials(tmp_path, monkeypatch):
    # a Tune trial runs in its own working directory: relative paths from the driver must not reach it
    from ray_jobs.distill_sweep import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.output_dir=runs", "distill.teacher=runs/fr/t/backbone",
                             "mlflow.tracking_uri=sqlite:///mlflow.db", "distill.verify_bins=[data/lfw.bin]"])
    out = absolute_paths(cfg)
    assert out.run.output_dir == str(tmp_path / "runs")
    assert out.distill.teacher == str(tmp_path / "runs/fr/t/backbone")
    assert out.distill.verify_bins == [str(tmp_path / "data/lfw.bin")]
    assert out.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
