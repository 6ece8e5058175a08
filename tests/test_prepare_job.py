"""The prepare job end to end: toy shards + .bin + MLflow run, resume, and a folder with bad files."""
import os

import mlflow
import numpy as np
import pytest

from fr.data.binfile import load_bin
from fr.data.images import encode_image
from fr.data.shards import list_shards, read_dataset_json
from ray_jobs.config import load_config
from ray_jobs.layout import prepared_dir as dataset_dir
from ray_jobs.prepare import run_prepare

pytestmark = pytest.mark.slow


def test_toy_prepare_logs_resumes_and_writes_bin(tmp_path, mlflow_uri, ray_local):
    args = [f"run.output_dir={tmp_path}", "prepare.toy.num_identities=20", "prepare.toy.min_images=2",
            "prepare.toy.max_images=6", "prepare.toy.verify_identities=6", "prepare.toy.verify_pairs=20",
            "prepare.rows_per_shard=20", "prepare.num_tasks=3"]
    cfg = load_config(None, args)
    info = run_prepare(cfg)
    train = dataset_dir(cfg) / "train"
    shards = list_shards(train)
    assert info.num_classes == 20 and info.num_images == sum(info.images_per_class)
    assert read_dataset_json(train).identities[3] == "toy_train_000003"
    images, issame = load_bin(dataset_dir(cfg) / "verify" / "toy_verify.bin")
    assert len(images) == 40 and issame.sum() == 10
    run = mlflow.search_runs(experiment_names=["facesynth"], output_format="list")[0]
    assert run.data.metrics["num_images"] == info.num_images
    assert 0.0 < run.data.metrics["raw_pixel_accuracy"] < 1.0
    # interrupted run: one shard and the manifest missing -> only that shard is written again
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    os.remove(shards[1])
    os.remove(train / "dataset.json")
    again = run_prepare(cfg)
    after = {p.name: p.stat().st_mtime_ns for p in list_shards(train)}
    assert again.num_images == info.num_images and set(after) == set(before)
    assert [n for n in after if after[n] != before[n]] == [shards[1].name]


def test_folder_prepare_skips_and_counts_corrupt(tmp_path, mlflow_uri, ray_local):
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for ident in ("alice", "bob", "carol"):
        (root / ident).mkdir(parents=True)
        for j in range(3):
            (root / ident / f"{j}.jpg").write_bytes(
                encode_image(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "prepare.source=folder", f"prepare.input_path={root}",
                             "prepare.dataset_name=faces"])
    info = run_prepare(cfg)
    assert info.num_classes == 3 and info.num_images == 9
    assert info.extra["ingest"]["skipped_corrupt"] == 1
    assert info.identities == ["alice", "bob", "carol"]
