"""SynthDistill result tables and figures: the sweep table (student accuracy per mode and c, Tables 4/6)
and accuracy vs c."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def aggregate(results: list[dict], metric: str) -> list[dict]:
    """Mean +- std of ``metric`` over the seeds of each (mode, c)."""
    groups: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in results:
        if metric in r:
            groups[(r["mode"], float(r["c"]))].append(float(r[metric]))
    return [{"mode": m, "c": c, "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
            for (m, c), v in sorted(groups.items())]


def results_markdown(results: list[dict], metric: str, teacher: float | None, floor_note: str = "") -> str:
    rows = aggregate(results, metric)
    lines = [f"| mode | c | student {metric} (mean +- std) | seeds |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['c']:g} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | {r['n']} |" for r in rows]
    if teacher is not None:
        lines.append(f"\nteacher on the same pairs: {100 * teacher:.2f}%")
    if floor_note:
        lines.append(floor_note)
    return "\n".join(lines) + "\n"


def accuracy_vs_c_png(results: list[dict], metric: str, path: str | Path, teacher: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    rows = aggregate(results, metric)
    for mode in sorted({r["mode"] for r in rows}):
        pts = [r for r in rows if r["mode"] == mode]
        ax.errorbar([r["c"] for r in pts], [100 * r["mean"] for r in pts], yerr=[100 * r["std"] for r in pts],
                    marker="o", capsize=3, label=mode)
    if teacher is not None:
        ax.axhline(100 * teacher, color="k", ls="--", lw=1, label="teacher")
    ax.set_xlabel("re-sampling coefficient c")
    ax.set_ylabel("verification accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
