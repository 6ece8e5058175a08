"""The evaluate job end to end on tiny toy datasets, the privacy gate of the generate job, bad inputs."""
import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from evaluation.embed import EvaluatorMismatchError
from fr.data.binfile import write_bin
from fr.prototypes import save_prototypes
from fr.data.shards import ShardError, read_dataset_json, write_dataset_json
from fr.data.toyfaces import ToyFaceConfig, make_verification_pairs
from ray_jobs.config import load_config
from ray_jobs.evaluate import run_evaluate, run_privacy_check
from ray_jobs.tracking import mlflow_run
from test_embed import noisy_copy, tiny_evaluator, toy_dataset

pytestmark = pytest.mark.slow
CLASSES = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Reference (12 real toy ids), a noisy copy of it marked synthetic, 12 other toy ids (one with a
    single image), a tiny evaluator with a quality head and prototypes, a verification .bin."""
    root = tmp_path_factory.mktemp("evaluate")
    ref = toy_dataset(root / "ref", list(range(CLASSES)))
    copy = toy_dataset(root / "copy", list(range(CLASSES)), source="synthetic", transform=noisy_copy())
    other = toy_dataset(root / "other", list(range(CLASSES)), split="verify", source="synthetic",
                        images=[3] * (CLASSES - 1) + [1])
    prefix = tiny_evaluator(root / "fr" / "ev", embedding_size=64)
    torch.manual_seed(0)
    save_prototypes(root / "fr" / "ev" / "prototypes", torch.randn(CLASSES + 4, 64), CLASSES, 4,
                    read_dataset_json(ref).identities)
    images, issame = make_verification_pairs(ToyFaceConfig(num_identities=4, seed=0), 4, 20, seed=0)
    write_bin(root / "toy_verify.bin", images, issame)
    return {"root": root, "ref": ref, "copy": copy, "other": other, "evaluator": prefix,
            "bin": root / "toy_verify.bin"}


def _cfg(data, out, uri, *extra):
    return load_config(None, [
        f"run.output_dir={out}", "run.name=ev", f"mlflow.tracking_uri={uri}",
        f"evaluate.reference={data['ref']}", f"evaluate.datasets=[{data['copy']}, {data['other']}]",
        f"evaluate.evaluator={data['evaluator']}", f"evaluate.checkpoints=[{data['evaluator']}]",
        f"evaluate.verify_bins=[{data['bin']}]", "evaluate.gate=fraction", "evaluate.max_leak_fraction=0.25",
        "evaluate.batch_size=16",
        "evaluate.cpus_per_actor=0.5", *extra])


def _cache_mtimes(data):
    return {p: p.stat().st_mtime_ns for d in ("ref", "copy", "other")
            for p in Path(str(data[d]) + ".embeddings").rglob("*.parquet")}


def test_evaluate_job_end_to_end_then_cached(data, tmp_path, mlflow_uri, ray_local):
    cfg = _cfg(data, tmp_path, mlflow_uri)
    report = run_evaluate(cfg)
    out = tmp_path / "evaluate" / "ev"
    assert json.loads((out / "report.json").read_text()) == report
    ds = report["datasets"]
    assert list(ds) == ["ref", "copy", "other"] and report["reference"] == "ref"
    for name in ds:
        assert all(isinstance(ds[name][m], float) for m in ("consistency", "separability", "diversity"))
        assert ds[name]["classes"] == CLASSES
    assert ds["ref"]["normalised"] == {"consistency": 1.0, "separability": 1.0, "diversity": 1.0}
    assert ds["ref"]["privacy"] is None and ds["ref"]["images"] == 3 * CLASSES
    # the copy leaks every identity, the other identities stay under the gate
    assert ds["copy"]["privacy"]["leak_fraction"] == 1.0 and ds["copy"]["privacy"]["passed"] is False
    assert ds["copy"]["privacy"]["top_matches"][0]["similarity"] > 0.99
    assert ds["other"]["privacy"]["leak_fraction"] <= 0.25 and ds["other"]["privacy"]["passed"] is True
    assert ds["other"]["singleton_classes"] == ["toy_verify_000011"] and ds["other"]["images"] == 3 * CLASSES - 2
    # real-ID fidelity by the evaluator: the copies carry the reference's names, so each is matched to the
    # evaluator's class means of the real images (near copies, a random tiny evaluator: well above the chance
    # 1/12); the other set has none
    assert ds["copy"]["real_id_fidelity"]["count"] == 3 * CLASSES and ds["copy"]["real_id_fidelity"]["top1"] >= 0.5
    assert "real_id_fidelity" not in ds["other"]
    assert report["embedding_cache"]["computed_shards"] == {str(data[d]): 2 for d in ("ref", "copy", "other")}
    acc = report["verification"]["ev"]["verify/toy_verify/accuracy"]
    assert 0.0 <= acc <= 1.0

    run = mlflow.search_runs(experiment_names=["facesynth"], output_format="list")[0]
    assert run.info.run_name == "ev-evaluate"
    assert run.data.metrics["copy/privacy/passed"] == 0.0 and run.data.metrics["other/privacy/passed"] == 1.0
    assert run.data.metrics["ev/verify/toy_verify/accuracy"] == pytest.approx(acc)
    client = MlflowClient(mlflow_uri)
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluate")}
    for name in ("report.json", "summary.txt", "properties_vs_reference.png", "leakage_distributions.png",
                 "leakage_top_matches_copy.png", "prototype_similarity.png", "tsne_prototypes.png",
                 "similarity_hist_other.png", "identities_ref.png", "lowest_consistency_copy.png",
                 "lowest_separability_ref.png", "lowest_diversity_other.png"):
        assert name in logged, name
    verify = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluate/verification/ev")}
    assert "roc.png" in verify

    # second run: every embedding comes from the cache, no cache file is rewritten
    before = _cache_mtimes(data)
    assert len(before) == 6
    again = run_evaluate(_cfg(data, tmp_path, mlflow_uri, "evaluate.checkpoints=[]"))
    assert again["embedding_cache"]["computed_shards"] == {str(data[d]): 0 for d in ("ref", "copy", "other")}
    assert _cache_mtimes(data) == before
    assert again["datasets"]["copy"]["consistency"] == pytest.approx(ds["copy"]["consistency"])


def test_privacy_check_records_the_verdict(data, tmp_path, mlflow_uri, ray_local):
    work = tmp_path / "sets"
    copy, other = shutil.copytree(data["copy"], work / "copy"), shutil.copytree(data["other"], work / "other")
    cfg = _cfg(data, tmp_path, mlflow_uri)
    with mlflow_run(cfg, "generate") as tracker:
        failed = run_privacy_check(cfg, copy, tracker)
        passed = run_privacy_check(cfg, other, tracker)
    assert failed["passed"] is False and failed["leak_fraction"] == 1.0
    assert passed["passed"] is True and passed["leak_fraction"] <= 0.25
    # the copy keeps the reference's identity names (as real-ID augmentation does); the other set has none
    assert failed["num_real_identities"] == CLASSES and passed["num_real_identities"] == 0
    for path, verdict in ((copy, failed), (other, passed)):
        recorded = read_dataset_json(path).extra["privacy"]
        assert recorded["passed"] is verdict["passed"] and recorded["leak_fraction"] == verdict["leak_fraction"]
        assert recorded["mode"] == "image" and recorded["reference"] == str(data["ref"])
        assert recorded["evaluator"] == str(data["evaluator"]) and recorded["real_level"] == verdict["real_level"]
    run = mlflow.search_runs(experiment_names=["facesynth"], output_format="list")[0]
    assert run.data.metrics["privacy/passed"] == 1.0  # the last check logged
    assert "leakage_distributions.png" in {Path(a.path).name for a in MlflowClient(mlflow_uri).list_artifacts(
        run.info.run_id, "privacy")}
    # the strict default gate (no identity may exceed the real level) is applied as configured
    strict = _cfg(data, tmp_path, mlflow_uri, "evaluate.max_leak_fraction=0.0")
    with mlflow_run(strict, "generate") as tracker:
        verdict = run_privacy_check(strict, copy, tracker)
    assert verdict["passed"] is False and read_dataset_json(copy).extra["privacy"]["max_leak_fraction"] == 0.0
    # the calibrated default gate: the copies fail the binomial test (every identity above the level)
    calibrated = _cfg(data, tmp_path, mlflow_uri, "evaluate.gate=binomial")
    with mlflow_run(calibrated, "generate") as tracker:
        verdict = run_privacy_check(calibrated, copy, tracker)
    assert verdict["passed"] is False and verdict["gate"] == "binomial" and verdict["p_value"] < 0.01
    assert verdict["num_leaking_identities"] == CLASSES and verdict["max_passing_leaks"] < CLASSES


def test_bad_inputs_are_named(data, tmp_path, mlflow_uri, ray_local):
    missing = tmp_path / "nowhere"
    with pytest.raises(ShardError, match=f"evaluate.reference: no usable dataset at {missing}"):
        run_evaluate(_cfg(data, tmp_path, mlflow_uri, f"evaluate.reference={missing}"))
    small = tiny_evaluator(tmp_path / "small", input_size=32, auto_resize=False, quality=False)
    with pytest.raises(EvaluatorMismatchError, match=r"evaluate.reference .*ref: 112x112 images do not fit"):
        run_evaluate(_cfg(data, tmp_path, mlflow_uri, f"evaluate.evaluator={small}"))
    gap = shutil.copytree(data["other"], tmp_path / "gap")
    info = read_dataset_json(gap)
    info.num_classes += 1
    info.identities.append("nobody")
    info.images_per_class.append(0)
    write_dataset_json(gap, info)
    with pytest.raises(ValueError, match=r"evaluate.datasets\[0\] .*gap: dataset.json lists 13 classes.*empty "
                                         r"classes \(first 10\): \[12\]"):
        run_evaluate(_cfg(data, tmp_path, mlflow_uri, f"evaluate.datasets=[{gap}]"))
    with pytest.raises(FileNotFoundError, match="evaluate.evaluator"):
        run_evaluate(_cfg(data, tmp_path, mlflow_uri, f"evaluate.evaluator={tmp_path / 'none'}"))
