"""compare: VIGFace Tables 1-2 chain (settings, table, reuse of the pipeline's dataset, a small real run)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fr.data.shards import build_dataset_info, read_dataset_json, write_dataset_json, write_shards
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
from evaluation.report import seed_mean_std
from ray_jobs.compare import _setting_parts, format_compare_table, realaug_config, run_compare, virtual_config
from ray_jobs.config import load_config
from ray_jobs.layout import generate_out_dir
from ray_jobs.prepare import run_prepare

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_settings_are_checked():
    assert _setting_parts("real+virtual+realaug") == ["real", "virtual", "realaug"]
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['virtul'\]"):
        _setting_parts("real+virtul")


def test_table_lists_every_setting_and_benchmark():
    table = format_compare_table({
        "real": {"images": 10, "classes": 2, "verify/lfw/accuracy": 0.9, "verify/lfw/accuracy_std": 0.01},
        "real+virtual": {"images": 14, "classes": 3, "verify/lfw/accuracy": 0.925, "verify/lfw/accuracy_std": 0.02}})
    lines = table.splitlines()
    assert lines[0].split() == ["setting", "images", "classes", "std", "over", "lfw"]
    assert lines[2].split() == ["real", "10", "2", "folds", "90.00", "+-", "1.00"]
    assert lines[3].split() == ["real+virtual", "14", "3", "folds", "92.50", "+-", "2.00"]


def test_several_seeds_give_the_mean_and_sample_std_over_seeds():
    per_seed = {0: {"verify/lfw/accuracy": 0.90, "verify/lfw/accuracy_std": 0.01, "verify/lfw/tar_far": 0.5},
                1: {"verify/lfw/accuracy": 0.92, "verify/lfw/accuracy_std": 0.03, "verify/lfw/tar_far": 0.7},
                2: {"verify/lfw/accuracy": 0.94, "verify/lfw/accuracy_std": 0.02, "verify/lfw/tar_far": 0.6}}
    row = seed_mean_std(per_seed)
    assert row["verify/lfw/accuracy"] == pytest.approx(0.92)
    assert row["verify/lfw/accuracy_std"] == pytest.approx(0.02)  # over the seeds (ddof 1), not the folds'
    assert row["verify/lfw/tar_far"] == pytest.approx(0.6) and row["num_seeds"] == 3
    table = format_compare_table({"real": {"images": 10, "classes": 2, **row}})
    assert table.splitlines()[2].split() == ["real", "10", "2", "3", "seeds", "92.00", "+-", "2.00"]


def test_tiny_preset_reuses_the_pipeline_virtual_set():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert virtual_config(cfg).generate == cfg.generate  # found on disk after `generate`, never redone
    assert generate_out_dir(virtual_config(cfg)) == generate_out_dir(cfg)
    aug = realaug_config(cfg).generate
    assert aug.which == "real" and aug.augment_real_to == cfg.compare.augment_real_to and not aug.privacy_check
    assert generate_out_dir(realaug_config(cfg)) != generate_out_dir(cfg)
    own = load_config(CONFIGS / "tiny.yaml", ["compare.realaug_overrides=[generate.guidance=2.5]"])
    assert realaug_config(own).generate.guidance == 2.5 and virtual_config(own).generate == own.generate


@pytest.mark.slow
def test_compare_trains_and_verifies_every_setting(tmp_path, mlflow_uri, ray_local):
    base = [f"run.output_dir={tmp_path}", "run.name=cmp", f"mlflow.tracking_uri={mlflow_uri}",
            "prepare.toy.num_identities=12", "prepare.toy.min_images=3", "prepare.toy.max_images=4",
            "prepare.toy.verify_identities=6", "prepare.toy.verify_pairs=40", "prepare.num_tasks=1"]
    run_prepare(load_config(None, base))
    # a stand-in for a generated virtual set: toy faces of 3 other identities, named as virtual ones
    virtual = tmp_path / "virtual"
    _virtual_set(virtual, 99)

    fr = ["train_fr.backbone=iresnet_tiny", "train_fr.backbone_kwargs={base_width: 8, input_size: 32, auto_resize: true}",
          "train_fr.num_virtual=0", "train_fr.crfiqa=false", "train_fr.batch_size=8", "train_fr.max_steps=2",
          "train_fr.cpus_per_worker=0.5", "train_fr.log_every=1"]
    cfg = load_config(None, base + [f"compare.virtual={virtual}", "compare.settings=[real, real+virtual]",
                                    f"compare.fr_overrides={json.dumps(fr)}"])
    results = run_compare(cfg)
    real = read_dataset_json(tmp_path / "data" / "toy" / "train")
    assert list(results) == ["real", "real+virtual"]
    assert (results["real"]["images"], results["real"]["classes"]) == (real.num_images, 12)
    assert (results["real+virtual"]["images"], results["real+virtual"]["classes"]) == (real.num_images + 6, 15)
    for r in results.values():
        assert 0.0 <= r["verify/toy_verify/accuracy"] <= 1.0
    mixed = read_dataset_json(Path(results["real+virtual"]["dataset"]))
    assert mixed.identities[-3:] == ["virtual_0", "virtual_1", "virtual_2"]
    saved = json.loads((tmp_path / "compare" / "cmp" / "compare.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert np.isfinite(saved["real"]["verify/toy_verify/accuracy"])
    # the virtual set regenerated: its setting trains a new run (new data tag), the real one is found again
    runs_before = sorted(p.name for p in (tmp_path / "fr").iterdir())
    shutil.rmtree(virtual)
    _virtual_set(virtual, 7)
    again = run_compare(cfg)
    runs_after = sorted(p.name for p in (tmp_path / "fr").iterdir())
    new_runs = sorted(set(runs_after) - set(runs_before))
    assert len(new_runs) == 1 and new_runs[0].startswith("cmp-cmp-real_virtual-")
    assert again["real"]["verify/toy_verify/accuracy"] == results["real"]["verify/toy_verify/accuracy"]


def _virtual_set(directory, seed):
    recs = list(iter_toy_records(ToyFaceConfig(num_identities=3, min_images=2, max_images=2, seed=seed), [0, 1, 2]))
    for r in recs:
        r.update(identity=f"virtual_{r['label']}", source="synthetic")
    write_shards(directory, recs, rows_per_shard=4)
    write_dataset_json(directory, build_dataset_info(directory, 112, {"test": True}))


def test_report_name_keeps_tables_apart(tmp_path):
    from ray_jobs.layout import compare_report_dir

    base = [f"run.output_dir={tmp_path}", "run.name=r"]
    assert compare_report_dir(load_config(None, base)) == tmp_path / "compare" / "r"
    assert compare_report_dir(load_config(None, base + ["compare.report_name=auggen"])).name == "auggen"


def test_a_named_dataset_without_manifest_points_at_its_train_folder(tmp_path):
    from ray_jobs.compare import _source_dirs

    given = tmp_path / "auggen_mixed_x"
    (given / "train").mkdir(parents=True)
    (given / "train" / "dataset.json").write_text("{}")
    cfg = load_config(None, [f"run.output_dir={tmp_path}", f"compare.auggen={given}"])
    with pytest.raises(FileNotFoundError, match=r"compare.auggen: .*auggen_mixed_x has no dataset.json \(its train/ "
                                                r"folder has one: compare.auggen=.*auggen_mixed_x/train\)"):
        _source_dirs(cfg, {"real", "auggen"})
    cfg = load_config(None, [f"run.output_dir={tmp_path}", f"compare.auggen={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match=r"nowhere has no dataset.json$"):
        _source_dirs(cfg, {"real", "auggen"})
