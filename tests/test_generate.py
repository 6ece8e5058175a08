"""Dataset generation with Ray Data: N x M rows, resume after an interruption, batch-size independence,
real-ID augmentation counts, early input errors."""
import json

import numpy as np
import pytest
import torch

import ray_jobs.shard_stream as shard_stream
from ray_jobs.layout import generate_out_dir
from fr.data.images import decode_image
from fr.prototypes import save_prototypes
from fr.data.shards import list_shards, read_dataset_json, read_table
from generation.conditions import ConditionError
from generation.dit import build_dit, save_dit
from ray_jobs.config import load_config
from ray_jobs.generate import run_generate
from test_train_dit_ray import make_stage1

NUM_REAL, NUM_VIRTUAL, SIDE = 3, 4, 32


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """A 32px toy dataset, prototypes and an exported tiny DiT where train_fr / train_dit leave them."""
    root = tmp_path_factory.mktemp("stage2")
    make_stage1(root, "gen", NUM_REAL, NUM_VIRTUAL, SIDE, min_images=2, max_images=5, backbone=False)
    torch.manual_seed(0)
    model = build_dit("tiny", image_size=SIDE)
    with torch.no_grad():  # past adaLN-Zero's zero output, so images depend on the condition
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_dit(model, root / "dit" / "gen")
    return root


def _cfg(root, mlflow_uri, *extra):
    return load_config(None, [
        f"run.output_dir={root}", "run.name=gen", f"mlflow.tracking_uri={mlflow_uri}", "generate.steps=2",
        "generate.num_identities=3", "generate.images_per_identity=4", "generate.rows_per_shard=5",
        "generate.batch_size=3", "generate.cpus_per_actor=0.5", "generate.privacy_check=false", *extra])


def _rows(out_dir):
    """(labels, identities, decoded images) of all shards in row order."""
    labels, names, images = [], [], []
    for path in list_shards(out_dir):
        table = read_table(path)
        assert set(table.column("source").to_pylist()) == {"synthetic"}
        labels += table.column("label").to_pylist()
        names += table.column("identity").to_pylist()
        images += [decode_image(b) for b in table.column("image").to_pylist()]
    return labels, names, np.stack(images).astype(int)


@pytest.mark.slow
def test_interrupted_generation_resumes_without_redoing_shards(stage2, mlflow_uri, ray_local, monkeypatch):
    out_dir = stage2 / "data" / "vigface_virtual" / "train"
    real_write = shard_stream.write_shard
    calls = []

    def failing_write(path, records):
        if calls:
            raise RuntimeError("simulated crash after the first shard")
        calls.append(path)
        return real_write(path, records)

    monkeypatch.setattr(shard_stream, "write_shard", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_generate(_cfg(stage2, mlflow_uri))
    first = list(out_dir.glob("part-*.parquet"))
    assert first == calls and not (out_dir / "dataset.json").exists()
    mtime, content = first[0].stat().st_mtime_ns, first[0].read_bytes()

    monkeypatch.setattr(shard_stream, "write_shard", real_write)
    info = run_generate(_cfg(stage2, mlflow_uri))
    assert first[0].stat().st_mtime_ns == mtime and first[0].read_bytes() == content  # not redone
    assert [p.name for p in list_shards(out_dir)] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    labels, names, images = _rows(out_dir)
    assert info.num_images == 12 and info.num_classes == 3 and info.images_per_class == [4, 4, 4]
    assert labels == [j for j in range(3) for _ in range(4)]
    assert names == [f"virtual_{j}" for j in range(3) for _ in range(4)]
    assert len({im.tobytes() for im in images}) == 12  # no duplicated rows
    prov = info.provenance
    assert prov["steps"] == 2 and prov["guidance"] == 4.0 and prov["seed"] == 0 and prov["model_dir"].endswith("dit/gen") and prov["generator"] == "vigface_dit"
    assert info.extra["prototype_rows"] == [3, 4, 5]

    # the same rows with another batch size and shard size
    other = run_generate(_cfg(stage2, mlflow_uri, "generate.batch_size=5", "generate.rows_per_shard=12",
                              "generate.dataset_name=rebatched"))
    labels2, _, images2 = _rows(stage2 / "data" / "rebatched" / "train")
    assert other.num_images == 12 and labels2 == labels and np.abs(images2 - images).max() <= 1

    # a finished dataset is not regenerated; a changed plan may not reuse its shards
    assert run_generate(_cfg(stage2, mlflow_uri)).num_images == 12
    with pytest.raises(ConditionError, match="another generation plan"):
        run_generate(_cfg(stage2, mlflow_uri, "generate.images_per_identity=5"))
    (out_dir / "dataset.json").unlink()
    with pytest.raises(ConditionError, match="another generation plan"):
        run_generate(_cfg(stage2, mlflow_uri, "generate.rows_per_shard=4"))


@pytest.mark.slow
def test_real_id_augmentation_tops_up_classes(stage2, mlflow_uri, ray_local):
    real = read_dataset_json(stage2 / "data" / "toy" / "train")
    target = max(real.images_per_class) + 1
    info = run_generate(_cfg(stage2, mlflow_uri, "generate.which=real", "generate.num_identities=0",
                             f"generate.augment_real_to={target}", "generate.dataset_name=augment"))
    assert info.images_per_class == [target - c for c in real.images_per_class]
    assert info.identities == real.identities and info.extra["prototype_rows"] == [0, 1, 2]


def test_bad_input_fails_before_any_work(stage2, mlflow_uri, tmp_path):
    save_prototypes(tmp_path / "p256", torch.randn(5, 256), 3, 2)
    bad_landmarks = tmp_path / "lm.npy"
    np.save(bad_landmarks, np.zeros((4, 4, 2), np.float32))
    cases = [
        ((f"generate.prototypes={tmp_path / 'p256'}",), ConditionError, "dimension 256"),
        ((f"generate.landmarks_from={bad_landmarks}",), ConditionError, r"\[M >= 1, 5, 2\]"),
        (("generate.guidance=25",), ValueError, "guidance"),
        (("generate.steps=0",), ValueError, "steps"),
        (("generate.which=everyone",), ConditionError, "which"),
        (("generate.batch_size=0",), ConditionError, "batch_size"),
        ((f"generate.dit={tmp_path / 'nodit'}",), FileNotFoundError, "config.json"),
    ]
    for overrides, error, match in cases:
        with pytest.raises(error, match=match):
            run_generate(_cfg(stage2, mlflow_uri, *overrides, "generate.dataset_name=never"))
    assert not (stage2 / "data" / "never").exists()
    assert json.loads((stage2 / "dit" / "gen" / "config.json").read_text())["image_size"] == SIDE


def test_generate_records_privacy_verdict(tmp_path, mlflow_uri, ray_local):
    """With generate.privacy_check on, the leakage verdict lands in dataset.json (and MLflow)."""
    root = tmp_path / "stage"
    make_stage1(root, "gen", NUM_REAL, NUM_VIRTUAL, SIDE, min_images=2, max_images=5, backbone=True)
    torch.manual_seed(0)
    model = build_dit("tiny", image_size=SIDE)
    save_dit(model, root / "dit" / "gen")
    # the stage-1 backbone stands in for the independent evaluator here (the default needs train_evaluator)
    info = run_generate(_cfg(root, mlflow_uri, "generate.privacy_check=true",
                             f"evaluate.evaluator={root / 'fr' / 'gen' / 'backbone'}"))
    privacy = read_dataset_json(generate_out_dir(_cfg(root, mlflow_uri))).extra["privacy"]
    assert set(privacy) >= {"passed", "leak_fraction", "real_level", "mode"}
    assert isinstance(privacy["passed"], bool) and 0.0 <= privacy["leak_fraction"] <= 1.0
    assert info.extra["privacy"] == privacy
