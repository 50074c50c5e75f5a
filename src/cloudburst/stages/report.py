"""What a run of stages did, call by call: cached or ran, where, how long, at what cost, and why it ran.

``compute`` builds a ``RunReport`` after every run, fills each record's ``why`` from the previous run of the
same name (``explain_changes``: ``Fingerprint.diff`` of the same call path), keeps it on this machine
(``<cache_dir>/stages/runs/<name>.json``, the last run of each name) and as this process's ``last_run()``.
``cloudburst cache why NAME`` prints a kept report's explanation.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..config.userconfig import cache_dir
from ..errors import ConfigurationError
from .keys import Fingerprint

__all__ = [
    "RunReport",
    "StageRecord",
    "explain_changes",
    "explain_saved",
    "last_run",
    "load_run",
    "progress_text",
    "runs_dir",
    "save_run",
    "set_last_run",
]

Status = Literal["cached", "ran", "failed", "skipped", "cancelled"]
_FORMAT = 1
_COLOURS = {"cached": "#9ecae1", "ran": "#31a354", "failed": "#de2d26", "skipped": "#bdbdbd", "cancelled": "#fdae6b"}


@dataclass
class StageRecord:
    """One node of a run (a stage call, or a whole ``map``): its status, times (wall clock), worker, shape
    (the options of its workers), seconds of work, cost, stored bytes, why it ran, and its error."""

    name: str
    call: str
    status: Status
    key: str | None = None
    started: float | None = None
    ended: float | None = None
    worker: str | None = None
    shape: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cost: float | None = None
    nbytes: int | None = None
    why: list[str] = field(default_factory=list)
    error: str | None = None
    fingerprint: dict[str, Any] | None = None

    @property
    def short(self) -> str:
        """The stage's name without its module."""
        return self.name.rsplit(":", 1)[-1]

    def line(self) -> str:
        """``name: status: why``, as ``explain`` prints it."""
        if self.status == "failed":
            return f"{self.short}: failed: {self.error}"
        if self.status == "skipped":
            return f"{self.short}: skipped ({self.error})"
        reasons = "; ".join(self.why)
        return f"{self.short}: {self.status}" + (f": {reasons}" if reasons else "")


@dataclass
class RunReport:
    """A run of ``cloudburst.compute``: one record per node, in the graph's order (inputs first)."""

    name: str
    backend: str
    started: float
    ended: float
    stages: list[StageRecord]
    cost: float = 0.0
    job_ids: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many records have each status."""
        counts = dict.fromkeys(("cached", "ran", "failed", "skipped", "cancelled"), 0)
        for record in self.stages:
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def summary(self) -> str:
        """One line: ``12 stages: 9 cached, 3 ran, 0 failed, $0.04, 8.1 s``."""
        counts = self.counts()
        extra = "".join(f", {counts[s]} {s}" for s in ("skipped", "cancelled") if counts[s])
        return (
            f"{len(self.stages)} stages: {counts['cached']} cached, {counts['ran']} ran, {counts['failed']} failed"
            f"{extra}, ${self.cost:.2f}, {self.ended - self.started:.1f} s"
        )

    def explain(self) -> str:
        """One line per call: cached, or ran and what changed since the last run of this name."""
        return "\n".join(record.line() for record in self.stages)

    def timeline(self, filename: str | os.PathLike[str] | None = None) -> Any:
        """A Gantt chart of the calls that ran, one row per worker, coloured by status: a matplotlib Figure
        (saved to ``filename`` when given), or, without matplotlib, the same as text."""
        try:
            import matplotlib

            if filename is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            text = self._text_timeline()
            if filename is not None:
                Path(filename).write_text(text + "\n")
            return text
        timed = [r for r in self.stages if r.started is not None and r.ended is not None]
        rows = sorted({r.worker or "?" for r in timed})
        figure, axes = plt.subplots(figsize=(10, 1 + 0.4 * max(1, len(rows))))
        for record in timed:
            assert record.started is not None and record.ended is not None
            row = rows.index(record.worker or "?")
            width = max(record.ended - record.started, 0.001)
            axes.barh(row, width, left=record.started - self.started, color=_COLOURS.get(record.status, "grey"))
            axes.text(record.started - self.started, row, record.short, va="center", fontsize=7)
        axes.set_yticks(range(len(rows)), labels=rows)
        axes.set_xlabel("seconds since the run started")
        axes.set_title(f"{self.name}: {self.summary()}")
        figure.tight_layout()
        if filename is not None:
            figure.savefig(filename)
        return figure

    def _text_timeline(self, width: int = 50) -> str:
        span = max(self.ended - self.started, 1e-9)
        lines = []
        for record in self.stages:
            if record.started is None or record.ended is None:
                lines.append(f"{record.short:<24} {'':<{width}} {record.status}")
                continue
            start = int((record.started - self.started) / span * width)
            length = max(1, int((record.ended - record.started) / span * width))
            bar = (" " * start + "█" * length)[:width]
            lines.append(f"{record.short:<24} {bar:<{width}} {record.status} {record.seconds:.2f} s")
        return "\n".join(lines)

    def to_dataframe(self) -> Any:
        """The records as a pandas DataFrame, one row per call."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("RunReport.to_dataframe() needs pandas: pip install pandas") from exc
        columns = [f.name for f in fields(StageRecord) if f.name != "fingerprint"]
        return pd.DataFrame([{name: getattr(r, name) for name in columns} for r in self.stages], columns=columns)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(r.short)}</td><td style='color:{_COLOURS.get(r.status, 'black')}'>{r.status}</td>"
            f"<td>{r.seconds:.2f}</td><td>{html.escape('; '.join(r.why) or (r.error or ''))}</td></tr>"
            for r in self.stages
        )
        head = "<tr><th>stage</th><th>status</th><th>seconds</th><th>why</th></tr>"
        return f"<p>{html.escape(self.name)}: {html.escape(self.summary())}</p><table>{head}{rows}</table>"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (errors as text)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stages"}
        data["stages"] = [{f.name: getattr(r, f.name) for f in fields(r)} for r in self.stages]
        data["format"] = _FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunReport:
        """The report ``to_json`` wrote."""
        names = {f.name for f in fields(StageRecord)}
        stages = [StageRecord(**{k: v for k, v in r.items() if k in names}) for r in data["stages"]]
        keep = {f.name for f in fields(cls)} - {"stages"}
        return cls(stages=stages, **{k: v for k, v in data.items() if k in keep})


_LAST: list[RunReport] = []


def runs_dir() -> Path:
    """Where the last run of each name is kept."""
    return cache_dir() / "stages" / "runs"


def _path(name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:100] or "_"
    return runs_dir() / f"{slug}.json"


def explain_changes(report: RunReport, previous: RunReport | None) -> None:
    """Fill ``why`` of every call that ran: what changed since the same call of ``previous``."""
    before = {record.call: record for record in previous.stages} if previous else {}
    for record in report.stages:
        if record.status != "ran":
            continue
        if record.key is None:
            record.why.append("cache off")
            continue
        if record.fingerprint is None:
            continue
        old = before.get(record.call)
        if old is None or old.fingerprint is None:
            record.why.append("no previous run of this call recorded")
            continue
        changes = Fingerprint.from_json(record.fingerprint).diff(Fingerprint.from_json(old.fingerprint))
        record.why.extend(str(change) for change in changes)
        if not changes:
            record.why.append("its previous entry was not in the cache (cleared, expired, or not written)")


def save_run(report: RunReport) -> Path:
    """Keep ``report`` as the last run of its name (written atomically)."""
    path = _path(report.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(report.to_json(), fh, default=str, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_run(name: str) -> RunReport | None:
    """The last kept run named ``name``, or None."""
    try:
        return RunReport.from_json(json.loads(_path(name).read_text()))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def set_last_run(report: RunReport) -> None:
    """Remember the report of this process's last compute."""
    _LAST[:] = [report]


def last_run(name: str | None = None) -> RunReport | None:
    """The report of this process's last ``compute``; with ``name``, the last kept run of that name."""
    if name is not None:
        return load_run(name)
    return _LAST[0] if _LAST else None


def explain_saved(name: str, stage: str | None = None, as_json: bool = False) -> str:
    """The explanation of the last kept run named ``name`` (only the calls of ``stage`` when given)."""
    report = load_run(name)
    if report is None:
        known = sorted(p.stem for p in runs_dir().glob("*.json")) if runs_dir().is_dir() else []
        listed = ", ".join(known) if known else "none yet"
        raise ConfigurationError(
            f"no run named {name!r} is recorded on this machine (known runs: {listed}); "
            "a run is recorded by cloudburst.compute(..., name=NAME), then `cloudburst cache why NAME` explains it"
        )
    records = [r for r in report.stages if stage is None or stage in (r.name, r.short)]
    if as_json:
        return json.dumps([{"stage": r.name, "call": r.call, "status": r.status, "why": r.why} for r in records])
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.started))
    return f"{report.name} ({when}): {report.summary()}\n" + "\n".join(r.line() for r in records)


def progress_text(done: int, total: int, running: int, cached: int, failed: int, cost: float) -> str:
    """The progress line of a run: ``stages 23/40 · 3 running · 14 cached · 1 failed · $0.04``."""
    return f"stages {done}/{total} · {running} running · {cached} cached · {failed} failed · ${cost:.2f}"
