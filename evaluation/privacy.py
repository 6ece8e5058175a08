"""The privacy gate: identity leakage of a synthetic dataset against the real reference, and its verdict.

:func:`privacy_gate` is the one function every caller uses (``generate``'s check, ``evaluate``'s
table): embeddings in, verdict out. A set passes only when its count of identities above the real
nearest-negative level is no more than genuinely new people would give (gate ``binomial``, the default:
``evaluation.gate_calibration.binomial_gate`` at ``alpha``) AND none of its identities is a reference
person (``evaluation.report.privacy_verdict``). Gate ``fraction`` is the old uncalibrated rule
(leak fraction <= ``max_leak_fraction``), kept for comparison: it fails a clean set about half the time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.evaluated_set import EvaluatedSet, analysis_device, real_identities_in
from evaluation.gate_calibration import GATES, binomial_gate, new_identity_rate
from evaluation.leakage import LeakageReport, leakage_report
from evaluation.report import privacy_verdict


@dataclass(frozen=True)
class LeakageSettings:
    """The leakage measure and the gate (``evaluate.*`` of the config)."""

    mode: str = "image"  # image | centre
    quantile: float = 0.99  # real nearest-negative level = this quantile of the real per-class maxima
    max_leak_fraction: float = 0.01  # gate "fraction" only
    query_chunk: int = 4096
    key_chunk: int = 65536
    gate: str = "binomial"  # binomial (calibrated against new people) | fraction (the old rule)
    alpha: float = 0.01  # binomial gate: a set of new people fails with probability <= alpha

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ValueError(f"evaluate.gate: {self.gate!r} is not one of {GATES}")

    def knn_kwargs(self) -> dict[str, Any]:
        return {"query_chunk": self.query_chunk, "key_chunk": self.key_chunk, "device": analysis_device()}


def leakage_of(settings: LeakageSettings, synth: EvaluatedSet, ref: EvaluatedSet,
               real_reference: np.ndarray | None = None) -> LeakageReport:
    """Leakage of a dataset's synthetic rows against the reference (ValueError if it has none)."""
    if not synth.synthetic.any():
        raise ValueError(f"{synth.path}: no rows with source 'synthetic'; nothing to check for identity leakage")
    rows = synth.synthetic_rows
    if rows.dim != ref.rows.dim:
        raise ValueError(f"{synth.path}: {rows.dim}-d embeddings vs {ref.rows.dim}-d for the reference")
    return leakage_report(rows.embeddings, rows.labels, ref.rows.embeddings, ref.rows.labels, settings.mode,
                          threshold_quantile=settings.quantile, real_reference=real_reference,
                          **settings.knn_kwargs())


def privacy_gate(settings: LeakageSettings, synth: EvaluatedSet, ref: EvaluatedSet,
                 real_reference: np.ndarray | None = None, **context: Any) -> tuple[dict[str, Any], LeakageReport]:
    """(the verdict, the leakage report behind it) of ``synth``'s synthetic rows against ``ref``."""
    report = leakage_of(settings, synth, ref, real_reference)
    return gate_verdict(settings, report, real_identities_in(synth, ref), **context), report


def gate_verdict(settings: LeakageSettings, report: LeakageReport, real_identities: list[str] = (),
                 **context: Any) -> dict[str, Any]:
    """The verdict of ``settings.gate`` on a leakage report (``evaluation.report.privacy_verdict``'s fields;
    the binomial gate replaces its pass/fail and reason and adds ``expected_rate``, ``p_value``, ``alpha``,
    ``max_passing_leaks``)."""
    if settings.gate == "fraction":
        return privacy_verdict(report, settings.max_leak_fraction, real_identities, gate="fraction", **context)
    decision = binomial_gate(int(report.leaking_identities.size), int(report.identity_labels.size),
                             new_identity_rate(report.real_identity_max, report.real_level), settings.alpha)
    verdict = privacy_verdict(report, 1.0, real_identities, gate="binomial", **context)
    verdict.pop("max_leak_fraction")
    verdict.update({k: v for k, v in decision.as_dict().items() if k not in ("passed", "num_identities", "num_leaking")})
    verdict["passed"] = decision.passed and not real_identities
    if not real_identities:
        verdict["reason"] = ("leak count within what new people give" if decision.passed else
                             f"identity leakage: {decision.num_leaking} of {decision.num_identities} identities "
                             f"above the real level, p = {decision.p_value:.2g} < {decision.alpha:g} for new people")
    return verdict
