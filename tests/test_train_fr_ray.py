"""End-to-end FR training on Ray Train: fault injection + resume, and resume on another world size."""
import hashlib
import json

import pytest
from safetensors.torch import load_file

from fr.backbones import load_backbone
from fr.prototypes import load_prototypes
from ray_jobs.config import load_config
from ray_jobs.prepare import run_prepare
from fr.training import NonFiniteLossError
from ray_jobs.train_fr import run_train_fr

pytestmark = pytest.mark.slow


def _cfg(tmp_path, mlflow_uri, *extra):
    return load_config(None, [
        f"run.output_dir={tmp_path}", "run.name=e2e", f"mlflow.tracking_uri={mlflow_uri}",
        "prepare.toy.num_identities=24", "prepare.toy.min_images=3", "prepare.toy.max_images=6",
        "prepare.toy.verify_identities=8", "prepare.toy.verify_pairs=40", "prepare.num_tasks=2",
        "train_fr.backbone=iresnet_tiny",
        "train_fr.backbone_kwargs={base_width: 8, input_size: 32, auto_resize: true}",
        "train_fr.num_virtual=6", "train_fr.crfiqa=true", "train_fr.batch_size=16",
        "train_fr.checkpoint_every=2", "train_fr.log_every=1", "train_fr.cpus_per_worker=0.5",
        "train_fr.lr=0.05", *extra])


def _checkpoints(tmp_path):
    return sorted(p for p in (tmp_path / "ray_train" / "e2e-train_fr").glob("checkpoint_*") if p.is_dir())


def test_kill_and_resume_then_resume_on_one_worker(tmp_path, mlflow_uri, ray_local):
    run_prepare(_cfg(tmp_path, mlflow_uri))
    # 2 workers; rank 0 dies at step 3 -> Ray Train restarts the group from the step-2 checkpoint
    out = run_train_fr(_cfg(tmp_path, mlflow_uri, "train_fr.num_workers=2", "train_fr.max_steps=4",
                            "train_fr.fail_at_step=3", "train_fr.max_failures=1"))
    state = out["state"]
    assert state["step"] == 4 and state["world_size"] == 2
    assert [r["step"] for r in state["resumes"]] == [2]
    assert (tmp_path / "fr" / "e2e" / ".failed_once_3").exists()
    saved = load_file(str(_checkpoints(tmp_path)[-1] / "head.safetensors"))["weight"]
    saved_sha = hashlib.sha1(saved.float().numpy().tobytes()).hexdigest()

    # same run name, 1 worker: resumes from the 2-worker step-4 checkpoint with identical head weights
    out = run_train_fr(_cfg(tmp_path, mlflow_uri, "train_fr.num_workers=1", "train_fr.max_steps=6"))
    resume = out["state"]["resumes"][-1]
    assert resume["step"] == 4 and resume["saved_world_size"] == 2 and resume["world_size"] == 1
    assert resume["head_weight_sha1"] == saved_sha
    assert out["state"]["step"] == 6

    # exported artefacts: backbone + prototypes (24 real + 6 virtual) + verification metrics
    export = tmp_path / "fr" / "e2e"
    load_backbone(export / "backbone", expected_name="iresnet_tiny")
    protos = load_prototypes(export / "prototypes")
    assert protos.num_real == 24 and protos.num_virtual == 6 and protos.weight.shape == (30, 512)
    metrics = json.loads((export / "metrics.json").read_text())["final"]
    assert 0.0 <= metrics["verify/toy_verify/accuracy"] <= 1.0


def test_errors_before_training(tmp_path, mlflow_uri, ray_local):
    with pytest.raises(Exception, match="dataset.json"):
        run_train_fr(_cfg(tmp_path, mlflow_uri))
    run_prepare(_cfg(tmp_path, mlflow_uri))
    with pytest.raises(ValueError, match="does not divide across 3 workers"):
        run_train_fr(_cfg(tmp_path, mlflow_uri, "train_fr.num_workers=3"))


def test_nonfinite_losses_stop_the_run_cleanly(tmp_path, mlflow_uri, ray_local):
    run_prepare(_cfg(tmp_path, mlflow_uri))
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row.*Last good checkpoint: .*checkpoint_"):
        run_train_fr(_cfg(tmp_path, mlflow_uri, "train_fr.lr=1e30", "train_fr.grad_clip=0", "train_fr.max_steps=12",
                          "train_fr.max_nonfinite=2", "train_fr.crfiqa=false"))
