"""The privacy check of a synthetic dataset (what ``generate`` runs on a fresh set): embed it and the real
reference (``ray_jobs.embedding_pass``), apply the gate (``evaluation.privacy.privacy_gate``), write the
verdict into the set's ``dataset.json`` and log it with the leakage figures to MLflow."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evaluation.dataset_figures import plot_leakage_pairs
from evaluation.dataset_plots import plot_leakage_distributions
from evaluation.embed import load_evaluator
from evaluation.embedding_cache import dataset_fingerprint
from evaluation.evaluated_set import display_name
from evaluation.privacy import LeakageSettings, privacy_gate
from evaluation.report import json_safe
from fr.data.shards import read_dataset_json, write_dataset_json
from ray_jobs import layout
from ray_jobs.config import FacesynthConfig
from ray_jobs.errors import InputError
from ray_jobs.embedding_pass import evaluator_files, load_sets
from ray_jobs.tracking import Tracker

log = logging.getLogger(__name__)


def leakage_settings(cfg: FacesynthConfig) -> LeakageSettings:
    e = cfg.evaluate
    try:
        return LeakageSettings(e.leakage_mode, e.leakage_quantile, e.max_leak_fraction, e.query_chunk, e.key_chunk,
                               gate=e.gate, alpha=e.gate_alpha)
    except ValueError as exc:
        raise InputError(f"evaluate: {exc}") from exc


def run_privacy_check(cfg: FacesynthConfig, synthetic_dir: str | Path, tracker: Tracker) -> dict[str, Any]:
    """Identity-leakage gate of a synthetic dataset against the reference; the verdict goes into its dataset.json.

    ``extra["privacy"] = {"passed", "leak_fraction", "real_level", "mode", "evaluator", "reference", ...}``;
    metrics ``privacy/*`` and the leakage plots go to ``tracker``. Returns the verdict.
    """
    files = evaluator_files(cfg)
    evaluator = load_evaluator(files.backbone, files.quality, files.flip)
    synthetic_dir, ref_dir = Path(synthetic_dir), layout.evaluate_reference_dir(cfg)
    sets, cache = load_sets(cfg, files, evaluator, {"synthetic": (synthetic_dir, "synthetic dataset"),
                                                   "reference": (ref_dir, "evaluate.reference")})
    synth, ref = sets["synthetic"], sets["reference"]
    verdict, report = privacy_gate(leakage_settings(cfg), synth, ref, evaluator=str(files.backbone),
                                   evaluator_key=files.key, reference=str(ref_dir),
                                   dataset_fingerprint=dataset_fingerprint(synthetic_dir))
    info = read_dataset_json(synthetic_dir)
    info.extra["privacy"] = json_safe(verdict)
    write_dataset_json(synthetic_dir, info)
    tracker.metrics({f"privacy/{k}": float(v) for k, v in verdict.items() if isinstance(v, (bool, int, float))})
    out_dir = layout.privacy_report_dir(cfg, display_name(synthetic_dir))
    plot_leakage_distributions(report, out_dir / "leakage_distributions.png")
    plot_leakage_pairs(report, synth, ref, out_dir / "leakage_top_matches.png")
    for png in sorted(out_dir.glob("*.png")):
        tracker.artifact(png, "privacy")
    log.info("privacy check of %s: %s (leak fraction %.4f, real level %.4f)", synthetic_dir,
             "PASSED" if verdict["passed"] else "FAILED", verdict["leak_fraction"], verdict["real_level"])
    return verdict


def log_privacy_verdict(verdict: dict[str, Any], tracker: Tracker) -> None:
    """The verdict in the log (a warning when it fails) and as the MLflow tag ``privacy``."""
    status = "PASSED (privacy-free)" if verdict["passed"] else f"FAILED ({verdict['reason']}: not privacy-free)"
    if verdict.get("gate") == "binomial":
        gate = (f"binomial gate: at most {verdict['max_passing_leaks']} leaking identities pass, new people "
                f"lie above the level at rate {verdict['expected_rate']:.4f}, alpha {verdict['alpha']:g}")
    else:
        gate = f"fraction gate {100 * verdict['max_leak_fraction']:.1f}%"
    log.log(logging.INFO if verdict["passed"] else logging.WARNING,
            "privacy check %s: %d of %d synthetic identities (%.1f%%) above the real nearest-negative level %.3f (%s)",
            status, verdict["num_leaking_identities"], verdict["num_identities"], 100 * verdict["leak_fraction"],
            verdict["real_level"], gate)
    tracker.tags({"privacy": "passed" if verdict["passed"] else "failed"})
