"""Pictures of a run: when each stage call ran, on which worker, and what it did.

``draw_text`` is the terminal's (one line per call, a bar on a shared time axis); ``draw_figure`` is a
matplotlib Gantt chart, one lane per worker, bars coloured by status. ``RunReport.timeline`` picks one;
this module knows nothing of reports, only of ``Bar`` rows.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COLOURS", "Bar", "draw_figure", "draw_text", "matplotlib_available"]

#: status -> bar colour (matplotlib's default palette, so the picture looks like the user's other plots)
COLOURS = {
    "ran": "#1f77b4",
    "cached": "#2ca02c",
    "failed": "#d62728",
    "skipped": "#7f7f7f",
    "cancelled": "#ff7f0e",
}
_WIDTH = 40  # characters of the text timeline's time axis
_CLIENT = "client"  # the lane of calls no worker ran (cache hits)


@dataclass(frozen=True)
class Bar:
    """One stage call on the timeline; ``started``/``ended`` are None when it has no time (skipped)."""

    label: str
    status: str
    worker: str | None
    started: float | None
    ended: float | None


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (it is optional: the text timeline stands in)."""
    try:
        importlib.import_module("matplotlib.figure")
    except ImportError:
        return False
    return True


def draw_text(bars: Sequence[Bar], start: float, end: float, title: str) -> str:
    """The timeline as text: a header, then one line per call in start order (untimed calls last)."""
    span = max(end - start, 1e-9)
    label_width = max((len(bar.label) for bar in bars), default=5)
    worker_width = max((len(bar.worker or _CLIENT) for bar in bars), default=6)
    axis = f"0 s{f'{span:.1f} s':>{_WIDTH - 3}}"  # over the bars, between the |
    lines = [title, f"{'':{label_width}}  {'':{worker_width}}   {axis}"]
    for bar in sorted(bars, key=lambda b: (b.started is None, b.started or 0.0, b.label)):
        lines.append(
            f"{bar.label:<{label_width}}  {bar.worker or _CLIENT:<{worker_width}}  "
            f"|{_text_bar(bar, start, span)}| {bar.status}{_seconds(bar)}"
        )
    return "\n".join(lines)


def _text_bar(bar: Bar, start: float, span: float) -> str:
    if bar.started is None:
        return " " * _WIDTH
    first = min(_WIDTH - 1, max(0, int((bar.started - start) / span * _WIDTH + 1e-6)))  # 1e-6: float noise
    last = min(_WIDTH, max(first + 1, round(((bar.ended or bar.started) - start) / span * _WIDTH)))
    mark = "█" if bar.status == "ran" else "▒" if bar.status == "failed" else "·"
    return " " * first + mark * (last - first) + " " * (_WIDTH - last)


def _seconds(bar: Bar) -> str:
    if bar.started is None or bar.ended is None:
        return ""
    return f" {bar.ended - bar.started:.2f} s"


def draw_figure(
    bars: Sequence[Bar], start: float, end: float, title: str, filename: str | os.PathLike[str] | None = None
) -> Any:
    """A matplotlib Figure: one lane per worker (cache hits on the "client" lane), bars coloured by status,
    each labelled with its call; saved to ``filename`` when given. Needs matplotlib."""
    figure_module: Any = importlib.import_module("matplotlib.figure")
    patches: Any = importlib.import_module("matplotlib.patches")
    timed = [bar for bar in bars if bar.started is not None]
    lanes = sorted({bar.worker or _CLIENT for bar in timed}, key=lambda lane: (lane == _CLIENT, lane))
    figure = figure_module.Figure(figsize=(10, 1.5 + 0.5 * len(lanes)))
    axes = figure.add_subplot()
    shortest = max(end - start, 1e-3) / 200  # an instant call still shows as a sliver
    for bar in timed:
        assert bar.started is not None  # for mypy: timed bars have a start
        lane = lanes.index(bar.worker or _CLIENT)
        left, width = bar.started - start, max((bar.ended or bar.started) - bar.started, shortest)
        axes.barh(lane, width, left=left, color=COLOURS.get(bar.status, "black"), edgecolor="black", linewidth=0.3)
        axes.text(left, lane, f" {bar.label}", va="center", fontsize=7, clip_on=True)
    axes.set_yticks(range(len(lanes)), labels=lanes)
    axes.invert_yaxis()  # first worker on top, as in the text timeline
    axes.set_xlabel("seconds since the run started")
    axes.set_title(title)
    shown = [status for status in COLOURS if any(bar.status == status for bar in timed)]
    axes.legend(handles=[patches.Patch(color=COLOURS[s], label=s) for s in shown], loc="upper right", fontsize=7)
    figure.tight_layout()
    if filename is not None:
        figure.savefig(os.fspath(filename))
    return figure
