"""Curves of logged values over training steps, with constant references (e.g. a student's verification
accuracy over the steps against its teacher's, SynthDistill Tables 2-3)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from evaluation.plots import PathLike, new_figure, save_figure


def plot_curves(series: Mapping[str, Sequence[tuple[int, float]]], path: PathLike | None = None,
                references: Mapping[str, float] | None = None, title: str = "", xlabel: str = "step",
                ylabel: str = "", scale: float = 1.0) -> Figure:
    """One line per name of ``(step, value)`` points, one dashed horizontal line per reference; values
    multiplied by ``scale`` (100 for percentages). ValueError if there is nothing to draw."""
    drawn = {k: sorted(v) for k, v in series.items() if len(v)}
    if not drawn and not references:
        raise ValueError("plot_curves: no series and no references to draw")
    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    for name, points in drawn.items():
        ax.plot([p[0] for p in points], [scale * p[1] for p in points], marker="o", ms=3, label=name)
    for k, (name, value) in enumerate((references or {}).items()):
        ax.axhline(scale * value, ls="--", lw=1, color=f"C{len(drawn) + k}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
