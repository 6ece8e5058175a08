"""MLflow review shape: experiments of the model-training kind, sweeps as a parent with nested trials,
and the metric keys / artifacts of the new methods' runs (build_codes run for real; the AugGen and
SynthDistill review helpers on constructed data)."""
from __future__ import annotations

import threading

import mlflow
import numpy as np
import pytest

from fr.data.shards import build_dataset_info, write_dataset_json, write_shards
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
from ray_jobs.config import load_config
from ray_jobs.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, mlflow_run, nested_under

PARENT_TAG = "mlflow.parentRunId"


def _cfg(tmp_path, *extra):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=t", "mlflow.experiment=review", *extra])


def _experiment(uri, name="review"):
    return mlflow.MlflowClient(uri).get_experiment_by_name(name)


def _runs(uri, name="review"):
    client = mlflow.MlflowClient(uri)
    return {r.info.run_name: r for r in client.search_runs([_experiment(uri, name).experiment_id])}


def test_new_and_existing_experiments_get_the_model_training_kind(tmp_path, mlflow_uri):
    with mlflow_run(_cfg(tmp_path), "job"):
        pass
    assert _experiment(mlflow_uri).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    client = mlflow.MlflowClient(mlflow_uri)
    client.create_experiment("old")  # made before the tag existed
    client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "chosen"):
        with mlflow_run(_cfg(tmp_path, f"mlflow.experiment={name}"), "job"):
            pass
    assert _experiment(mlflow_uri, "old").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert _experiment(mlflow_uri, "chosen").tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's kind is kept


def _in_other_thread(fn):
    """MLflow's active-run stack is per thread: another thread stands in for a Tune trial process."""
    errors: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test thread)
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def test_distill_sweep_trials_are_nested_runs_of_the_parent(tmp_path, mlflow_uri, monkeypatch):
    """``distill_trial`` (the Tune trainable) opens the trial's distill run under the sweep's parent, with
    the trial's mode / c / seed as params and its accuracy as metrics; nothing else becomes a run."""
    import ray.tune

    from ray_jobs import distill_sweep
    from ray_jobs.config import to_dict
    from ray_jobs.jobs import JOBS

    def fake_distill(cfg):  # the real job minus the training: one MLflow run, its final accuracy
        with mlflow_run(cfg, "distill") as tracker:
            tracker.metrics({"student_toy_accuracy": 0.5 + cfg.distill.c / 10})
        return {"summary": {"student_toy_accuracy": 0.5 + cfg.distill.c / 10}}

    reported = []
    monkeypatch.setitem(JOBS, "distill", fake_distill)
    monkeypatch.setattr(ray.tune, "report", reported.append)
    cfg = _cfg(tmp_path)
    with mlflow_run(cfg, "distill_sweep") as parent:
        for mode, c in (("dynamic_w", 1.0), ("static", 2.0)):
            _in_other_thread(lambda m=mode, cc=c: distill_sweep.distill_trial(
                {"mode": m, "c": cc, "seed": 0}, base=to_dict(cfg), parent_run_id=parent.run_id))
    runs = _runs(mlflow_uri)
    assert set(runs) == {"t-distill_sweep", "t-dynamic_w-c1-s0-distill", "t-static-c2-s0-distill"}
    assert PARENT_TAG not in runs["t-distill_sweep"].data.tags
    trials = {"t-dynamic_w-c1-s0-distill": ("dynamic_w", 1.0), "t-static-c2-s0-distill": ("static", 2.0)}
    for name, (mode, c) in trials.items():
        run = runs[name]
        assert run.data.tags[PARENT_TAG] == parent.run_id
        assert run.data.params["distill.mode"] == mode and float(run.data.params["distill.c"]) == c
        assert run.data.metrics["student_toy_accuracy"] == pytest.approx(0.5 + c / 10)
    assert [r["student_toy_accuracy"] for r in reported] == pytest.approx([0.6, 0.7])
    with mlflow_run(cfg, "outer") as outer:  # an active run wins over nested_under (compare -> train_fr)
        with nested_under(parent.run_id), mlflow_run(cfg, "inner"):
            pass
    with nested_under(None), mlflow_run(cfg, "alone"):
        pass
    runs = _runs(mlflow_uri)
    assert runs["t-inner"].data.tags[PARENT_TAG] == outer.run_id
    assert PARENT_TAG not in runs["t-alone"].data.tags


def test_build_codes_run_logs_objective_code_stats_and_figures(tmp_path, mlflow_uri):
    from ray_jobs.build_codes import run_build_codes

    data = tmp_path / "toy" / "train"
    toy = ToyFaceConfig(num_identities=20, min_images=2, max_images=3, image_size=32)
    write_shards(data, iter_toy_records(toy, range(20)), rows_per_shard=30)
    write_dataset_json(data, build_dataset_info(data, 32, {"source": "test"}))
    cfg = _cfg(tmp_path, f"gif.dataset={data}", "gif.local_pass=true", "gif.code_length=2", "gif.vocab_size=5",
               "gif.pixel_dim=8", "gif.optimise.steps=20", "gif.optimise.batch=16", "gif.optimise.neighbours=4",
               "gif.optimise.partners=4", "gif.optimise.log_every=5", "gif.spread_sample=0")
    run_build_codes(cfg)
    run = _runs(mlflow_uri)["t-build_codes"]
    client = mlflow.MlflowClient(mlflow_uri)
    keys = set(run.data.metrics)
    assert {"codes/tokens_used_l0", "codes/tokens_used_l1", "codes/collisions_resolved", "codes/unique_codes",
            "objective_before/uniformity", "objective_after/uniformity"} <= keys, sorted(keys)
    curve = [k for k in keys if k.startswith("homogenise/")]
    assert curve and len(client.get_metric_history(run.info.run_id, curve[0])) >= 2  # a curve, not a point
    assert run.data.metrics["codes/unique_codes"] == 20
    names = {a.path for a in client.list_artifacts(run.info.run_id, "codes")}
    assert {"codes/codes.json", "codes/code_usage.png", "codes/code_vector_spread.png"} <= names
    assert _experiment(mlflow_uri).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


class _PixelEmbedder:
    """Stand-in M_orig: the flattened 8x8 thumbnail (deterministic, no model)."""

    def embed(self, faces):
        import cv2

        x = np.stack([cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA) for f in faces]).reshape(len(faces), -1)
        x = x.astype(np.float32) - 127.5
        return x / np.linalg.norm(x, axis=1, keepdims=True), None


def test_auggen_review_scores_and_figure_follow_the_provenance(tmp_path):
    """A 'mixed' class made of copies of its source i's images is at m_d = 0 from that source; the figure
    has one row per class (2 source tiles + per_class samples)."""
    from evaluation.auggen_review import mixed_class_figure, mixed_set_scores
    from evaluation.mixing_metric import m_s
    from fr.data.images import decode_image

    real = tmp_path / "real"
    toy = ToyFaceConfig(num_identities=6, min_images=4, max_images=4, image_size=32)
    records = list(iter_toy_records(toy, range(6)))
    write_shards(real, iter(records), rows_per_shard=100)
    write_dataset_json(real, build_dataset_info(real, 32, {"source": "test"}))
    by_label = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    classes = [{"label": 0, "sources": [2, 5], "alpha": 0.7, "beta": 0.7},
               {"label": 1, "sources": [3, 1], "alpha": 0.7, "beta": 0.7}]
    aug = tmp_path / "aug"
    rows = [{**r, "label": k, "identity": f"mix{k}", "source": "synthetic"}
            for k, c in enumerate(classes) for r in by_label[c["sources"][0]]]
    write_shards(aug, iter(rows), rows_per_shard=100)
    write_dataset_json(aug, build_dataset_info(aug, 32, {"source": "test", "classes": classes}))
    scores = mixed_set_scores(_PixelEmbedder(), aug, real, classes, 32, 32)
    assert scores["m_d"] == pytest.approx(0.0, abs=1e-6)
    faces = np.stack([decode_image(r["image"]) for c in classes for r in by_label[c["sources"][0]]])
    emb = _PixelEmbedder().embed(faces)[0].reshape(2, 4, -1)
    assert scores["m_s"] == pytest.approx(float(m_s(emb).mean()), rel=1e-5)
    assert scores["scored_classes"] == 2 and scores["scored_images_per_class"] == 4
    png = mixed_class_figure(aug, real, classes, 32, 32, tmp_path / "mixed.png", per_class=4)
    img = decode_image(png.read_bytes())
    pad = 2
    assert img.shape[:2] == (pad + 2 * (32 + pad), pad + 6 * (32 + pad))


def test_curves_figure(tmp_path):
    from evaluation.curves import plot_curves

    path = tmp_path / "acc.png"
    plot_curves({"student toy": [(10, 0.6), (5, 0.55)]}, path, {"teacher toy": 0.9}, ylabel="%", scale=100)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="nothing|no series"):
        plot_curves({"empty": []}, None)


def test_an_interrupted_training_run_continues_in_the_same_mlflow_run(tmp_path, mlflow_uri):
    cfg = _cfg(tmp_path, "train_dit.max_steps=10")
    with pytest.raises(KeyboardInterrupt):
        with mlflow_run(cfg, "train_dit", resume=True) as tracker:
            first = tracker.run_id
            tracker.metrics({"loss": 1.0}, step=1)
            raise KeyboardInterrupt  # the job was stopped
    # the rerun (with one setting changed) continues it: one curve, the change named
    with mlflow_run(_cfg(tmp_path, "train_dit.max_steps=8"), "train_dit", resume=True) as tracker:
        assert tracker.run_id == first
        tracker.metrics({"loss": 0.5}, step=2)
    run = mlflow.MlflowClient(mlflow_uri).get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["facesynth.resumed"] == "1"
    assert "train_dit.max_steps: 10 -> 8" in run.data.tags["facesynth.resumed_changes"]
    assert [m.value for m in mlflow.MlflowClient(mlflow_uri).get_metric_history(first, "loss")] == [1.0, 0.5]
    # a finished run is never reopened; without resume (or for another run name) a new run starts
    with mlflow_run(cfg, "train_dit", resume=True) as tracker:
        assert tracker.run_id != first
    with pytest.raises(RuntimeError):
        with mlflow_run(cfg, "evaluate") as tracker:
            failed = tracker.run_id
            raise RuntimeError
    with mlflow_run(cfg, "evaluate") as tracker:
        assert tracker.run_id != failed
    with pytest.raises(RuntimeError):
        with mlflow_run(cfg, "train_fr", resume=True) as tracker:
            other = tracker.run_id
            raise RuntimeError
    with mlflow_run(_cfg(tmp_path, "run.name=u"), "train_fr", resume=True) as tracker:
        assert tracker.run_id != other
