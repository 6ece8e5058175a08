"""The privacy gate: identity leakage of a synthetic dataset against the real reference, and its verdict.

:func:`privacy_gate` is the one function every caller uses (``generate``'s check, ``evaluate``'s
table): embeddings in, verdict out. A set passes only when at most ``max_leak_fraction`` of its
identities lie above the real nearest-negative level AND none of its identities is a reference person
(``evaluation.report.privacy_verdict``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.evaluated_set import EvaluatedSet, analysis_device, real_identities_in
from evaluation.leakage import LeakageReport, leakage_report
from evaluation.report import privacy_verdict


@dataclass(frozen=True)
class LeakageSettings:
    """The leakage measure and the gate (``evaluate.*`` of the config)."""

    mode: str = "image"  # image | centre
    quantile: float = 0.99  # real nearest-negative level = this quantile of the real per-class maxima
    max_leak_fraction: float = 0.01
    query_chunk: int = 4096
    key_chunk: int = 65536

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
    verdict = privacy_verdict(report, settings.max_leak_fraction, real_identities_in(synth, ref), **context)
    return verdict, report
