"""The pipeline's summary: one row per trained model (method, training data, real images, identities,
verification accuracy +- std, TAR@FAR, privacy verdict of its data, wall time), beside the real-data
baseline and the raw-pixel floor; as a terminal/markdown table and as JSON.

Plain functions over the jobs' own result dicts: no model is run here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SUMMARY_FAR = 1e-3  # the TAR@FAR column (3000 toy pairs hold 1500 impostor pairs: 1e-3 is ~1.5 of them)


@dataclass
class SummaryRow:
    method: str  # VIGFace, AugGen, SynthDistill, GIF, or "baseline" / "floor"
    model: str  # what was trained (e.g. "FR IR-SE-tiny, AdaFace, partial FC")
    data: str  # what it was trained on
    preset: str  # the config and the stage's overrides (the budget this row had)
    real_images: int | None  # distinct real images in its training data (None: not applicable)
    identities: int | None  # classes in its training data
    benchmark: str = ""
    accuracy: float = math.nan
    accuracy_std: float = math.nan
    tar_at_far: float = math.nan
    privacy: str = ""
    seconds: float = math.nan


def verification_figures(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    """Accuracy, its std over the folds and TAR@FAR of the first benchmark in ``metrics``.

    ``key(bench, metric)`` is how the job names a metric, e.g. ``verify/<bench>/accuracy`` (train_fr) or
    ``student_<bench>_accuracy`` (distill): pass the format string with ``{bench}`` and ``{metric}``.
    """
    for name in sorted(metrics):
        for bench in _benchmarks_in(name, key):
            get = lambda metric: float(metrics.get(key.format(bench=bench, metric=metric), math.nan))  # noqa: E731
            return {"benchmark": bench, "accuracy": get("accuracy"), "accuracy_std": get("accuracy_std"),
                    "tar_at_far": get(f"tar_at_far_{SUMMARY_FAR:g}")}
    return {}


def _benchmarks_in(name: str, key: str) -> list[str]:
    head, tail = key.split("{bench}")
    tail = tail.format(metric="accuracy")
    if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
        return [name[len(head):len(name) - len(tail)]]
    return []


def privacy_label(parts: list[str], virtual_verdict: dict[str, Any] | None = None) -> str:
    """The privacy status of a training set made of ``parts`` (real / virtual / realaug / auggen / generated).

    Anything with real images or images of real identities is not privacy-free, whatever its synthetic part
    did; a virtual-only set is what its leakage gate said (never assumed).
    """
    if "real" in parts or "realaug" in parts:
        return "real identities: not privacy-free"
    if "auggen" in parts:
        return "derived from real identities (augmentation): not privacy-free"
    if parts == ["virtual"]:
        if not virtual_verdict:
            return "virtual: gate not run"
        gate = "pass" if virtual_verdict.get("passed") else f"FAIL ({virtual_verdict.get('reason', 'gate')})"
        return f"virtual: gate {gate}"
    if parts == ["generated"]:
        return "generated on the fly (no stored set, no gate)"
    return "unknown"


def _pct(value: float, std: float | None = None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:.2f}" + ("" if std is None or math.isnan(std) else f" +- {100 * std:.2f}")


def _minutes(seconds: float) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds / 60:.1f} min"


def format_summary(rows: list[SummaryRow]) -> str:
    """A markdown table (also readable in a terminal)."""
    header = ["method", "model", "training data", "real images", "identities", "accuracy %",
              f"TAR@FAR={SUMMARY_FAR:g}", "privacy of its data", "train time", "preset"]
    body = [[r.method, r.model, r.data, "-" if r.real_images is None else str(r.real_images),
             "-" if r.identities is None else str(r.identities), _pct(r.accuracy, r.accuracy_std),
             "-" if math.isnan(r.tar_at_far) else f"{r.tar_at_far:.3f}", r.privacy, _minutes(r.seconds), r.preset]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def format_stage_times(stages: list[dict[str, Any]]) -> str:
    """stage | method | wall time | how (ran / skipped as done earlier), and the total."""
    lines = ["| stage | method | wall time | this run |", "|---|---|---|---|"]
    total = 0.0
    for s in stages:
        total += s.get("seconds", 0.0)
        lines.append(f"| {s['name']} | {s['method']} | {s.get('seconds', 0.0) / 60:.1f} min | {s['how']} |")
    lines.append(f"| **total** | | **{total / 60:.1f} min** | |")
    return "\n".join(lines)


def summary_json(rows: list[SummaryRow]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
            for r in rows]
