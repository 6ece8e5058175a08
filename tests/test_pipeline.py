"""The pipeline's stage selection, resume record, progress and summary, with the jobs replaced by recorders
(the jobs themselves have their own end-to-end tests)."""
from __future__ import annotations

import json

import pytest

from evaluation.pipeline_summary import SummaryRow, format_summary, privacy_label, verification_figures
from ray_jobs import pipeline as pl
from ray_jobs.config import ConfigError, load_config
from ray_jobs.jobs import JOBS

FR_METRICS = {"verify/toy/accuracy": 0.9, "verify/toy/accuracy_std": 0.01, "verify/toy/tar_at_far_0.001": 0.4}


def _cfg(tmp_path, *extra):
    return load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}", "run.name=p",
                                             f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra])


@pytest.fixture()
def fake_jobs(monkeypatch):
    """Every stage job replaced by a recorder returning a result shaped like the real job's."""
    calls: list[tuple[str, object]] = []
    results = {
        "prepare": {"num_images": 100, "num_classes": 10},
        "train_fr": {"metrics": FR_METRICS, "seconds": 3.0},
        "compare": {"real": {"dataset": "x", "images": 100, "classes": 10, "real_images": 100,
                             "train_seconds": 2.0, **FR_METRICS}},
        "distill": {"summary": {"student": "tinyfar_c", "teacher": "t", "images_seen": 64, "generator": "toy",
                                "mode": "dynamic_w", "c": 1.0, "train_seconds": 5.0, "student_toy_accuracy": 0.6,
                                "student_toy_accuracy_std": 0.02}},
    }
    for job in {s.job for s in pl.STAGES}:
        def run(cfg, job=job):
            calls.append((job, cfg))
            if cfg.run.name.endswith("fail") and job == "train_dit":
                raise KeyboardInterrupt  # a kill in the middle of a stage
            return results.get(job, {"ok": True})
        monkeypatch.setitem(JOBS, job, run)
    monkeypatch.setattr(pl, "floor_row", lambda cfg: SummaryRow("floor", "raw pixels", "-", "-", None, None,
                                                                "toy", 0.6, 0.02))
    return calls


def test_methods_select_stages_and_unknown_methods_fail(tmp_path):
    names = [s.name for s in pl.selected_stages(_cfg(tmp_path, "pipeline.methods=[gif]"))]
    assert names[:2] == ["prepare", "train_fr"] and "build_codes" in names and "gif_train_fr" in names
    assert not {"train_dit", "train_auggen", "distill", "evaluate"} & set(names)
    with pytest.raises(ConfigError, match="pipeline.methods: unknown"):
        pl.selected_stages(_cfg(tmp_path, "pipeline.methods=[vigface,stylegan]"))
    with pytest.raises(ConfigError, match="stage_overrides: unknown stage"):
        pl.selected_stages(_cfg(tmp_path, "pipeline.stage_overrides={trian_fr: []}"))


def test_compare_settings_follow_the_methods(tmp_path):
    only_gif = pl.stage_config(_cfg(tmp_path, "pipeline.methods=[gif]"), pl.STAGES[-2])[0]
    assert only_gif.compare.settings == ["real"]
    both = pl.stage_config(_cfg(tmp_path, "pipeline.methods=[vigface,auggen]"), pl.STAGES[-2])[0]
    assert both.compare.settings[-1] == "real+auggen" and "real+virtual+realaug" in both.compare.settings


def test_gif_stage_trains_the_compare_recipe_with_the_token_head(tmp_path):
    cfg = _cfg(tmp_path)
    gif = next(s for s in pl.STAGES if s.name == "gif_train_fr")
    scfg, _ = pl.stage_config(cfg, gif)
    assert scfg.train_fr.head == "gif" and scfg.run.name == "p-gif"
    assert scfg.train_fr.backbone == "ir_se_tiny" and scfg.train_fr.codes.endswith("codes/p")


def test_resume_skips_done_stages_and_reruns_the_interrupted_one(tmp_path, fake_jobs, capsys):
    with pytest.raises(KeyboardInterrupt):
        pl.pipeline(_cfg(tmp_path, "run.name=pfail", "pipeline.methods=[vigface]"))
    state = json.loads((tmp_path / "pipeline" / "pfail" / "state.json").read_text())
    assert state["stages"]["train_fr"]["status"] == "done"
    assert state["stages"]["train_dit"]["status"] == "running"  # the killed stage is not marked done
    first = [job for job, _ in fake_jobs]
    fake_jobs.clear()
    cfg = _cfg(tmp_path, "run.name=pfail", "pipeline.methods=[vigface]")
    # same config, the failure no longer injected: only the unfinished stages run
    JOBS["train_dit"] = lambda c: fake_jobs.append(("train_dit", c)) or {"ok": True}
    pl.pipeline(cfg)
    second = [job for job, _ in fake_jobs]
    assert first[:2] == ["prepare", "train_fr"] and "prepare" not in second and "train_fr" not in second
    assert second[0] == "train_dit"
    out = capsys.readouterr().out
    assert "stage 1/" in out and "skipped" in out and "ETA" in out


def test_a_changed_stage_config_reruns_that_stage_only(tmp_path, fake_jobs):
    pl.pipeline(_cfg(tmp_path, "pipeline.methods=[synthdistill]"))
    fake_jobs.clear()
    pl.pipeline(_cfg(tmp_path, "pipeline.methods=[synthdistill]", "distill.c=1.5", "ray.num_cpus=1"))
    rerun = [job for job, _ in fake_jobs]
    assert "distill" in rerun and "compare" in rerun  # compare's fingerprint holds every section
    assert "prepare" not in rerun and "train_fr" not in rerun
    fake_jobs.clear()
    pl.pipeline(_cfg(tmp_path, "pipeline.methods=[synthdistill]", "distill.c=1.5"))
    assert fake_jobs == []
    pl.pipeline(_cfg(tmp_path, "pipeline.methods=[synthdistill]", "distill.c=1.5", "train_fr.epochs=3"))
    assert [job for job, _ in fake_jobs][0] == "train_fr" and "prepare" not in [j for j, _ in fake_jobs]


def test_summary_rows_files_and_mlflow_run(tmp_path, fake_jobs):
    import mlflow

    payload = pl.pipeline(_cfg(tmp_path, "pipeline.methods=[synthdistill]",
                               "pipeline.stage_overrides={distill: [distill.epochs=1]}"))
    rows = {r["method"]: r for r in payload["rows"]}
    assert rows["VIGFace stage 1 (shared)"]["accuracy"] == 0.9 and rows["baseline (real)"]["real_images"] == 100
    student = rows["SynthDistill"]
    assert student["accuracy"] == 0.6 and student["real_images"] == 0 and "distill.epochs=1" in student["preset"]
    assert rows["floor"]["accuracy"] == 0.6
    md = (tmp_path / "pipeline" / "p" / "summary.md").read_text()
    assert "| SynthDistill" in md and "Wall time per stage" in md
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["facesynth-tiny"], filter_string="tags.job = 'pipeline'",
                             output_format="list")
    assert run and any(k.endswith("/accuracy") for k in run[0].data.metrics)


def test_privacy_labels_never_call_real_data_privacy_free():
    assert "not privacy-free" in privacy_label(["real", "virtual"], {"passed": True})
    assert "not privacy-free" in privacy_label(["auggen"])
    assert privacy_label(["virtual"], {"passed": True}) == "virtual: gate pass"
    assert "FAIL" in privacy_label(["virtual"], {"passed": False, "reason": "leak"})
    assert privacy_label(["virtual"], None) == "virtual: gate not run"


def test_verification_figures_read_both_naming_schemes():
    assert verification_figures(FR_METRICS, "verify/{bench}/{metric}")["tar_at_far"] == 0.4
    figs = verification_figures({"student_lfw_accuracy": 0.7}, "student_{bench}_{metric}")
    assert figs["benchmark"] == "lfw" and figs["accuracy"] == 0.7
    assert verification_figures({}, "verify/{bench}/{metric}") == {}
    table = format_summary([SummaryRow("m", "x", "d", "p", 1, 2, "toy", 0.5, 0.01, 0.2, "ok", 60.0)])
    assert "50.00 +- 1.00" in table and "1.0 min" in table
