"""AugGen jobs on Ray: train_auggen (resume, export), auggen_generate (repro/mixed shards, resume, provenance)
and auggen_search (Tune grid with nested MLflow runs, resume after a failed trial). Tiny sizes throughout."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fr.backbones import build_backbone, save_backbone
from fr.data.images import encode_image
from fr.data.shards import build_dataset_info, read_dataset_json, shard_path, write_dataset_json, write_shard
from generation.edm2_checkpoint import save_edm2_model
from generation.edm2_unet import EDM2Config, EDM2Denoiser
from ray_jobs.config import ConfigError, load_config

NUM_CLASSES = 4


def _dataset(root, num_classes=NUM_CLASSES, per_class=4):
    rng = np.random.default_rng(0)
    records = []
    for c in range(num_classes):
        base = rng.integers(0, 255, size=(1, 1, 3))
        for k in range(per_class):
            img = np.clip(base + rng.normal(0, 20, size=(112, 112, 3)), 0, 255).astype(np.uint8)
            records.append({"image": encode_image(img, "png"), "label": c, "identity": f"id{c}",
                            "landmarks": np.zeros(10, np.float32), "source": "real"})
    write_shard(shard_path(root, 0), records)
    write_dataset_json(root, build_dataset_info(root, 112, {"source": "test"}))
    return root


def _model(root, data_dir):
    torch.manual_seed(0)
    cfg = EDM2Config(image_size=8, num_classes=NUM_CLASSES, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                     attn_resolutions=[4], channels_per_head=8, logvar_channels=16)
    model = EDM2Denoiser(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 0:
                p.fill_(0.5)
    return save_edm2_model(model, root, extra={"trained_on": str(data_dir), "identities": [f"id{c}" for c in range(NUM_CLASSES)]})


def _cfg(tmp_path, *extra):
    return load_config(None, [f"run.output_dir={tmp_path / 'out'}", "run.name=t", "ray.num_cpus=2",
                              "auggen.generate.steps=2", "auggen.generate.batch_size=8", "auggen.generate.output_size=16",
                              "auggen.generate.rows_per_shard=5", "auggen.generate.cpus_per_actor=0.5",
                              *extra])


@pytest.fixture()
def setup(tmp_path):
    data = _dataset(tmp_path / "real")
    model_dir = _model(tmp_path / "gen", data)
    fr = build_backbone("iresnet_tiny", 32, base_width=8, layers=[1, 1, 1, 1], input_size=16, auto_resize=True)
    prefix = save_backbone(fr, tmp_path / "fr" / "backbone")
    return {"data": data, "model": model_dir, "fr": prefix}


TINY_MODEL = ("auggen.train.model_kwargs={image_size: 8, model_channels: 8, channel_mult: [1, 2], "
              "attn_resolutions: [4], channels_per_head: 8, logvar_channels: 16}")


@pytest.mark.slow
def test_train_resume_export_then_generate_repro_and_mixed(setup, tmp_path, ray_local, mlflow_uri):
    from ray_jobs.auggen_generate import run_auggen_generate
    from ray_jobs.train_auggen import run_train_auggen

    out = run_train_auggen(_cfg(tmp_path, f"auggen.train.dataset={setup['data']}", "auggen.train.size=tiny", TINY_MODEL,
                                "auggen.train.batch_size=4", "auggen.train.max_steps=4", "auggen.train.checkpoint_every=2",
                                "auggen.train.fail_at_step=3", "auggen.train.max_failures=1",
                                "auggen.train.snapshot_every=1", "auggen.train.export_std=0.075",
                                "auggen.train.sample_steps=2", "auggen.train.sample_classes=2",
                                "auggen.train.sample_per_class=2", "auggen.train.cpus_per_worker=1", "auggen.train.log_every=1"))
    metrics = json.loads((out["export_dir"] / "metrics.json").read_text())
    assert metrics["state"]["step"] == 4 and metrics["state"]["resumes"][0]["step"] == 2  # failed at 3, resumed at 2
    assert metrics["export"]["from"] == "post-hoc reconstruction"
    config = json.loads((out["export_dir"] / "config.json").read_text())
    assert config["generator"] == "auggen_edm2" and config["trained_on"] == str(setup["data"].resolve())
    assert (out["export_dir"] / "samples_final.png").is_file()

    common = [f"auggen.generate.model={out['export_dir']}", "auggen.generate.images_per_class=3"]
    res = run_auggen_generate(_cfg(tmp_path, *common, "auggen.generate.which=repro", "auggen.generate.evaluate=false"))
    info = read_dataset_json(res["out_dir"])
    assert info.num_classes == NUM_CLASSES and info.num_images == 12 and info.identities[2] == "id2"
    from ray_jobs.auggen_generate import repro_top1

    top1 = repro_top1(_cfg(tmp_path, *common, "auggen.generate.which=repro", f"auggen.generate.evaluator={setup['fr']}"),
                      res["out_dir"])
    assert top1["chance"] == 0.25 and 0.0 <= top1["top1"] <= 1.0 and top1["num_images"] == 12
    cached = list(Path(f"{setup['data'].resolve()}.embeddings").glob("*/*.parquet"))
    assert cached  # the reference set's embeddings, reused by the next call (a selection grid makes many)
    stamp = cached[0].stat().st_mtime_ns
    again = repro_top1(_cfg(tmp_path, *common, "auggen.generate.which=repro", f"auggen.generate.evaluator={setup['fr']}"),
                       res["out_dir"])
    assert again["top1"] == top1["top1"] and cached[0].stat().st_mtime_ns == stamp
    cfg_mixed = _cfg(tmp_path, *common, "auggen.generate.which=mixed", "auggen.generate.num_new_classes=3",
                     "auggen.generate.alpha=0.7", "auggen.generate.beta=0.6")
    out = run_auggen_generate(cfg_mixed)["out_dir"]
    info = read_dataset_json(out)
    assert info.num_classes == 3 and info.num_images == 9 and info.image_size == 16
    prov = info.provenance
    assert "not privacy-free" in prov["privacy"] and prov["alpha"] == 0.7 and prov["beta"] == 0.6
    for cls in prov["classes"]:
        assert len(set(cls["sources"])) == 2 and cls["alpha"] == 0.7 and cls["beta"] == 0.6
    first = shard_path(out, 0).read_bytes()
    shard_path(out, 1).unlink()  # an interrupted run: only the missing shard is redone
    again = read_dataset_json(run_auggen_generate(cfg_mixed)["out_dir"])
    assert again.extra["shards_resumed"] == 1 and shard_path(out, 0).read_bytes() == first
    with pytest.raises(ConfigError, match="other settings"):
        run_auggen_generate(_cfg(tmp_path, *common, "auggen.generate.which=mixed", "auggen.generate.num_new_classes=3",
                                 "auggen.generate.alpha=0.9", "auggen.generate.beta=0.6"))
    with pytest.raises(ValueError, match="beta=2.5"):
        run_auggen_generate(_cfg(tmp_path, *common, "auggen.generate.which=mixed", "auggen.generate.alpha=0.5",
                                 "auggen.generate.beta=2.5", "auggen.generate.dataset_name=x"))


@pytest.mark.slow
def test_search_grid_nested_runs_and_resume(setup, tmp_path, ray_local, mlflow_uri):
    import mlflow

    from ray_jobs.auggen_search import run_auggen_search

    args = [f"auggen.generate.model={setup['model']}", f"auggen.search.fr_backbone={setup['fr']}",
            "auggen.search.alphas=[0.4, 0.9]", "auggen.search.betas=[0.5, 1.0]", "auggen.search.num_pairs=2",
            "auggen.search.images_per_pair=2", "auggen.search.steps=2", "auggen.search.cpus_per_trial=0.5",
            "auggen.search.max_concurrent=2", "mlflow.experiment=auggen-test"]
    cfg = _cfg(tmp_path, *args, "auggen.search.fail_at_alpha=0.9")
    first = run_auggen_search(cfg)  # the two alpha=0.9 trials fail once
    assert first["num_points"] == 2 and first["failed_points"] == 2
    summary = run_auggen_search(cfg)  # resumed: the failed trials run, the finished ones are kept
    assert summary["num_points"] == 4 and summary["failed_points"] == 0
    report = tmp_path / "out" / "auggen_search" / "t"
    search = json.loads((report / "search.json").read_text())
    assert len(search["results"]) == 4
    for r in search["results"]:
        assert r["m_total"] == pytest.approx(r["m_s"] + r["m_d"])
    assert json.loads((report / "best.json").read_text())["m_total"] == max(r["m_total"] for r in search["results"])
    assert (report / "heatmap.png").is_file() and list(report.glob("samples_best_*.png"))
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("auggen-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mlflow.runName") == "t-auggen_search"]
    assert len(parents) == 1 and "heatmap.png" in str(client.list_artifacts(parents[0].info.run_id, "auggen_search"))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == 4 and all("m_total" in r.data.metrics for r in finished)
    assert len(children) == 6  # + the two failed first attempts


def test_search_refuses_fr_model_of_other_data(setup, tmp_path):
    from ray_jobs.auggen_search import validate_search

    (setup["fr"].parent / "prototypes.json").write_text(json.dumps({"identities": ["x0", "x1", "x2", "x3"]}))
    cfg = _cfg(tmp_path, f"auggen.generate.model={setup['model']}", f"auggen.search.fr_backbone={setup['fr']}")
    with pytest.raises(ConfigError, match="other identities"):
        validate_search(cfg)


def test_d_repro_evaluation_gets_its_own_report_folder(tmp_path, monkeypatch):
    """D_repro's evaluate must not overwrite the run's VIGFace evaluation (evaluate/<run.name>)."""
    import ray_jobs.auggen_generate as ag
    from ray_jobs import layout
    from ray_jobs.jobs import JOBS

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r"])
    assert layout.evaluate_report_dir(cfg) == tmp_path / "evaluate" / "r"
    seen = {}
    monkeypatch.setattr(ag, "_trained_on", lambda c: str(tmp_path / "data" / "toy" / "train"))
    monkeypatch.setattr(ag, "read_dataset_json", lambda p: None)
    monkeypatch.setitem(JOBS, "evaluate", lambda sub: seen.setdefault("dir", layout.evaluate_report_dir(sub)))
    ag.evaluate_repro(cfg, tmp_path / "data" / "auggen_repro" / "train")
    assert seen["dir"] == tmp_path / "evaluate" / "r-auggen_repro"



def test_repro_judge_is_the_independent_evaluator_and_never_the_basis_model(tmp_path):
    from ray_jobs import layout
    from ray_jobs.auggen_generate import repro_evaluator

    cfg = _cfg(tmp_path)
    assert repro_evaluator(cfg) == layout.fr_backbone_prefix(cfg)  # one-hot labels, no evaluator: M_orig
    with pytest.raises(ConfigError, match="no part in the generator"):
        repro_evaluator(_cfg(tmp_path, "auggen.train.label_basis=stage1"))
    ev = layout.evaluator_prefix(cfg)
    save_backbone(build_backbone("iresnet_tiny", 32, base_width=8, layers=[1, 1, 1, 1], input_size=16), ev)
    assert repro_evaluator(_cfg(tmp_path, "auggen.train.label_basis=stage1")) == ev
    assert repro_evaluator(_cfg(tmp_path)) == ev
    assert repro_evaluator(_cfg(tmp_path, f"auggen.generate.evaluator={tmp_path / 'x'}")) == tmp_path / "x"


def test_search_refuses_to_restore_an_experiment_of_other_settings(tmp_path):
    """A restored Tune grid keeps its finished trials: a re-run at another guidance must not report them."""
    from ray_jobs import layout
    from ray_jobs.auggen_search import SETTINGS_FILE, check_restorable

    report, experiment = tmp_path / "report", tmp_path / "ray_train" / "t-auggen_search"
    record = {"generator": "/g", "guidance": 5.0, "alphas": [0.3, 0.7]}
    check_restorable(experiment, report, record, restorable=False)  # a new search: the record is written
    assert json.loads((report / SETTINGS_FILE).read_text()) == record
    check_restorable(experiment, report, dict(record), restorable=True)  # the same settings: resumed
    with pytest.raises(ConfigError, match=r"differs in \['guidance'\].*5\.0 there, 1\.0 now.*report_name"):
        check_restorable(experiment, report, {**record, "guidance": 1.0}, restorable=True)
    (report / SETTINGS_FILE).unlink()
    with pytest.raises(ConfigError, match="cannot be checked"):
        check_restorable(experiment, report, record, restorable=True)  # an experiment of unknown settings
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "auggen.search.report_name=g1"])
    assert layout.auggen_search_dir(cfg) == tmp_path / "auggen_search" / "g1"
    assert layout.auggen_search_dir(load_config(None, [f"run.output_dir={tmp_path}", "run.name=r"])) == \
        tmp_path / "auggen_search" / "r"
