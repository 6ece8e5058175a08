"""VIGFace stage 2 on Ray Train: a few steps, checkpoint + resume, export, MLflow logs; early input errors."""
import json

import pytest
import torch

from fr.backbones import BackboneMismatchError, build_backbone, save_backbone
from fr.prototypes import save_prototypes
from fr.data.shards import build_dataset_info, write_dataset_json, write_shard
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
from generation.checkpoint import weights_sha1
from generation.dit import load_dit
from generation.trainer_step import DiTInputError
from ray_jobs.config import load_config
from ray_jobs.train_dit import run_train_dit

NUM_REAL, NUM_VIRTUAL, SIDE = 5, 3, 32


def make_stage1(root, run_name, num_real, num_virtual, side, min_images=3, max_images=4, backbone=True):
    """A toy dataset of ``side`` px, random prototypes and (optionally) a tiny FR backbone, laid out
    where prepare / train_fr leave them (``data/toy/train``, ``fr/<run_name>/``). Returns the DatasetInfo."""
    data = root / "data" / "toy" / "train"
    toy = ToyFaceConfig(num_identities=num_real, image_size=side, min_images=min_images, max_images=max_images)
    write_shard(data / "part-00000.parquet", list(iter_toy_records(toy, range(num_real))))
    info = build_dataset_info(data, side, {"source": "toy"})
    write_dataset_json(data, info)
    export = root / "fr" / run_name
    save_prototypes(export / "prototypes", torch.randn(num_real + num_virtual, 512), num_real, num_virtual,
                    info.identities)
    if backbone:
        torch.manual_seed(0)
        save_backbone(build_backbone("iresnet_tiny", 512, base_width=8, input_size=side), export / "backbone")
    return info


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    make_stage1(root, "dit_e2e", NUM_REAL, NUM_VIRTUAL, SIDE)
    return root


def _cfg(root, mlflow_uri, *extra):
    return load_config(None, [
        f"run.output_dir={root}", "run.name=dit_e2e", f"mlflow.tracking_uri={mlflow_uri}",
        "train_fr.backbone=iresnet_tiny", "train_dit.size=tiny", f"train_dit.model_kwargs={{image_size: {SIDE}}}",
        "train_dit.batch_size=4", "train_dit.checkpoint_every=2", "train_dit.log_every=1", "train_dit.sample_every=2",
        "train_dit.sample_identities=2", "train_dit.sample_poses=2", "train_dit.cpus_per_worker=0.5",
        "train_dit.ema_decay=0.9", "train_dit.lr=0.001", "generate.steps=2", "train_dit.sample_steps=2", *extra])


@pytest.mark.slow
def test_train_checkpoint_resume_export(stage1, mlflow_uri, ray_local):
    out = run_train_dit(_cfg(stage1, mlflow_uri, "train_dit.max_steps=4"))
    assert out["state"]["step"] == 4 and "resumes" not in out["state"]
    ckpts = sorted(p for p in (stage1 / "ray_train" / "dit_e2e-train_dit").glob("checkpoint_*") if p.is_dir())
    assert ckpts, "no Ray Train checkpoints"
    saved = json.loads((ckpts[-1] / "state.json").read_text())
    num_images = json.loads((stage1 / "data" / "toy" / "train" / "dataset.json").read_text())["num_images"]
    assert saved["step"] == 4 and saved["epoch"] == 4 // (num_images // 4) and saved["batch_in_epoch"] == 4 % (
        num_images // 4)
    saved_sha = weights_sha1(load_dit(ckpts[-1] / "model"))
    export = stage1 / "dit" / "dit_e2e"
    first = weights_sha1(load_dit(export))
    assert first == weights_sha1(load_dit(ckpts[-1] / "ema"))

    # the resumed run also logs the learning curve with an evaluator (here the stage-1 backbone stands in)
    out = run_train_dit(_cfg(stage1, mlflow_uri, "train_dit.max_steps=6", "train_dit.eval_every=6",
                             "train_dit.eval_identities=2", f"evaluate.evaluator={stage1 / 'fr' / 'dit_e2e' / 'backbone'}"))
    resume = out["state"]["resumes"][-1]
    assert resume["step"] == 4 and resume["model_sha1"] == saved_sha
    assert out["state"]["step"] == 6
    assert weights_sha1(load_dit(export)) != first  # the export is the newer EMA

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("facesynth").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [5, 6]  # the resumed run logs from step 5
    for key in ("mse", "id", "images_per_s", "grad_norm"):
        assert key in run.data.metrics
    assert run.data.metrics["id"] > 0  # identity loss through the frozen backbone is on
    pngs = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert pngs == ["samples/samples_step00000006.png"]
    curve = client.get_metric_history(run.info.run_id, "fidelity/real/top1")
    assert [m.step for m in curve] == [6] and 0.0 <= curve[0].value <= 1.0
    assert "fidelity/virtual/consistency" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "learning_curve")] == [
        "learning_curve/learning_curve.png"]
    assert (export / "learning_curve.png").stat().st_size > 0


def test_errors_before_any_work(stage1, mlflow_uri, tmp_path):
    with pytest.raises(DiTInputError, match="train_evaluator"):
        run_train_dit(_cfg(stage1, mlflow_uri, "train_dit.eval_every=2"))
    with pytest.raises(DiTInputError, match="dataset's images are 32px"):
        run_train_dit(_cfg(stage1, mlflow_uri, "train_dit.model_kwargs={image_size: 64}"))
    with pytest.raises(DiTInputError, match="cond_dim 256"):
        run_train_dit(_cfg(stage1, mlflow_uri, f"train_dit.model_kwargs={{image_size: {SIDE}, cond_dim: 256}}"))
    other = tmp_path / "protos"
    save_prototypes(other, torch.randn(NUM_REAL + 2, 512), NUM_REAL + 1, 1)
    with pytest.raises(DiTInputError, match="6 real prototypes but the dataset has 5"):
        run_train_dit(_cfg(stage1, mlflow_uri, f"train_dit.prototypes={other}"))
    save_backbone(build_backbone("ir_se_tiny", 512, input_size=SIDE), tmp_path / "irse")
    with pytest.raises(BackboneMismatchError, match="ir_se_tiny"):
        run_train_dit(_cfg(stage1, mlflow_uri, f"train_dit.fr_backbone={tmp_path / 'irse'}"))
    save_backbone(build_backbone("iresnet_tiny", 128, base_width=8, input_size=SIDE), tmp_path / "small")
    with pytest.raises(DiTInputError, match=r"\(128,\)"):
        run_train_dit(_cfg(stage1, mlflow_uri, f"train_dit.fr_backbone={tmp_path / 'small'}"))
    with pytest.raises(ValueError, match="guidance"):
        run_train_dit(_cfg(stage1, mlflow_uri, "train_dit.sample_guidance=-1"))
