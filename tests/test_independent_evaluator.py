"""The independent evaluator: its fidelity figures, the train_evaluator config, the evaluator default, EMA warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.embed import load_evaluator
from evaluation.independent_evaluator import (FidelityProbe, flat_fidelity, format_independent, independent_fidelity,
                                              real_class_references)
from generation.dit_probe import probe_rows
from generation.ema import EMA, warmup_decay
from ray_jobs import layout
from ray_jobs.config import load_config
from ray_jobs.embedding_pass import evaluator_files
from ray_jobs.train_evaluator import evaluator_config
from test_embed import tiny_evaluator


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _real(rng, k=20, per=4, d=16, noise=0.2):
    centres = _unit(rng.standard_normal((k, d)))
    labels = np.repeat(np.arange(k), per)
    return centres, _unit(centres[labels] + noise * rng.standard_normal((k * per, d))), labels


def test_real_rows_are_judged_against_the_evaluators_class_means():
    rng = np.random.default_rng(0)
    centres, real, labels = _real(rng)
    refs = real_class_references(real, labels, 20)
    assert np.allclose(np.linalg.norm(refs, axis=1), 1.0, atol=1e-5)
    rows = np.repeat(np.arange(20), 2)
    good = _unit(centres[rows] + 0.2 * rng.standard_normal((40, 16)))
    noise = _unit(rng.standard_normal((40, 16)))
    hit, miss = (independent_fidelity(e, rows, 20, refs)["real"] for e in (good, noise))
    assert hit["top1"] >= 0.9 and hit["own_cos"] > 0.6 and hit["chance_top1"] == pytest.approx(1 / 20)
    assert miss["top1"] <= 0.25 and miss["own_cos"] < 0.4  # a generator that ignores its condition: chance
    with pytest.raises(ValueError, match="reference class means"):
        independent_fidelity(good, rows, 19, refs)


def test_virtual_rows_get_consistency_and_separability_ratios():
    rng = np.random.default_rng(1)
    centres, real, labels = _real(rng)
    real_props = {"consistency": 0.9, "separability": 1.0}
    vrows = 20 + np.repeat(np.arange(6), 3)  # rows >= num_real: virtual
    virt_centres = _unit(rng.standard_normal((6, 16)))
    tight = _unit(virt_centres[vrows - 20] + 0.1 * rng.standard_normal((18, 16)))
    loose = _unit(rng.standard_normal((18, 16)))
    refs = real_class_references(real, labels, 20)
    a, b = (independent_fidelity(e, vrows, 20, refs, real_props)["virtual"] for e in (tight, loose))
    assert a["count"] == 18 and a["consistency"] > 0.9 > b["consistency"]
    assert a["consistency_ratio"] == pytest.approx(a["consistency"] / 0.9)
    summary = independent_fidelity(np.concatenate([tight, tight[:4]]), np.r_[vrows, [0, 1, 2, 3]], 20, refs, real_props)
    assert summary["real"]["count"] == 4 and "consistency=" in format_independent(summary)
    assert "fidelity/virtual/consistency_ratio" in flat_fidelity(summary)


def test_probe_embeds_real_images_once_and_measures(tmp_path):
    prefix = tiny_evaluator(tmp_path / "ev", embedding_size=32, quality=False)
    evaluator = load_evaluator(prefix, None, True)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    probe = FidelityProbe(evaluator, faces, np.repeat(np.arange(4), 3), 4)
    assert probe.references.shape == (4, 32)
    out = probe.measure(faces[::3], np.arange(4))  # real images of each class: judged against their own means
    assert out["real"]["count"] == 4 and out["real"]["top1"] >= 0.5
    rows = probe_rows(4, 3, 2, 2)
    assert rows.tolist() == [0, 0, 3, 3, 4, 4, 6, 6]


def test_train_evaluator_config_is_another_model_in_its_own_dir(tmp_path):
    cfg = load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}"])
    sub = evaluator_config(cfg)
    assert (sub.train_fr.backbone, sub.train_fr.margin, sub.run.seed) == ("ir_se_tiny", "adaface", 1)
    assert sub.train_fr.num_virtual == 0 and sub.run.name == "tiny-evaluator"
    assert layout.fr_backbone_prefix(sub) == layout.evaluator_prefix(cfg) == tmp_path / "fr" / "tiny-evaluator" / "backbone"
    assert layout.fr_backbone_prefix(cfg) != layout.evaluator_prefix(cfg)
    same = load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}", "evaluate.evaluator_overrides=[]"])
    with pytest.raises(ValueError, match="repeat stage 1"):
        evaluator_config(same)


def test_missing_evaluator_names_the_job_that_makes_it(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="train_evaluator"):
        evaluator_files(cfg)
    prefix = tiny_evaluator(tmp_path / "fr" / "tiny-evaluator", quality=False)
    assert evaluator_files(cfg).backbone == prefix  # the default: the train_evaluator export, not stage 1


def test_ema_warmup_ramps_the_decay_in():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1) and warmup_decay(0.999, 10 ** 6) == 0.999
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    fixed, ramped = EMA(model, 0.999), EMA(model, 0.999, warmup=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(500):
        fixed.update(model)
        ramped.update(model)
    assert float(fixed.module.weight[0, 0]) == pytest.approx(1 - 0.999 ** 500, rel=1e-4)  # 39% of the way
    assert float(ramped.module.weight[0, 0]) > 0.99
    with pytest.raises(ValueError, match="warmup"):
        EMA(model, 0.999).load_state_dict(ramped.state_dict())
