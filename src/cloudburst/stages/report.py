"""What a pipeline run did, call by call, and why: run reports, their records on disk, the progress line.

The scheduler fills a ``StageRecord`` per stage call (its ``call`` is the call path, ``graph.Graph.paths``),
calls ``explain_changes(report, load_run(name))`` to say why each call that ran did, then ``save_run`` and
``set_last_run``. Users read it back with ``cb.last_run()`` or ``cloudburst cache why NAME``::

    <cache_dir()>/stages/runs/<name-slug>.json      the last run of each named pipeline (JSON, written atomically)

``RunReport.explain()`` gives one line per call::

    build_model: ran: code of pipeline.fit_linear changed
    get_data_y: cached
    x: failed: ValueError: ...
    y: skipped (get_data_x failed)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import importlib
import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..backends.local import LocalStore
from ..config.userconfig import cache_dir
from ..core.words import plural
from ..errors import ConfigurationError
from ..log import warn
from .keys import Fingerprint
from .timeline import Bar, draw_figure, draw_text, matplotlib_available

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
    "saved_names",
    "set_last_run",
]

Status = Literal["cached", "ran", "failed", "skipped", "cancelled"]
_FORMAT = 1  # of the run record files; a record of another format is not read
_NO_PREVIOUS = "no previous run of this call recorded"
_CACHE_OFF = "cache off"


@dataclass
class StageRecord:
    """One stage call of a run. ``call`` is its call path (stable across runs of one pipeline); ``why`` says
    why it ran (``explain_changes`` fills it), or for a skipped call what it waited for ("get_data_x failed");
    ``error`` is the failure as text; ``fingerprint`` is ``Fingerprint.to_json()`` of its key, or None."""

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

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON types (the error as its text)."""
        # A shallow copy: the fields are JSON already, and asdict's deep copy of each fingerprint is most of
        # the time a run of 1,000 tiny stages spends after its last stage.
        out = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}
        out["why"] = list(self.why)
        out["error"] = None if self.error is None else str(self.error)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        """The inverse of ``to_json``; entries it does not know are ignored."""
        known = {spec.name for spec in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})

    def line(self, label: str) -> str:
        """What ``explain()`` says of this call, on one line, naming it ``label``."""
        reason = "; ".join(self.why) or _first_line(self.error)
        if self.status == "ran":
            return f"{label}: ran: {reason}" if self.why else f"{label}: ran"
        if self.status == "failed":
            return f"{label}: failed: {_first_line(self.error) or 'unknown error'}"
        return f"{label}: {self.status} ({reason})" if reason and self.status != "cached" else f"{label}: {self.status}"


@dataclass
class RunReport:
    """A pipeline run: its records in the order the scheduler listed them, its span (wall clock) and cost."""

    name: str
    backend: str
    started: float
    ended: float
    stages: list[StageRecord]
    cost: float = 0.0
    job_ids: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """A short name per record: the function's name, numbered ("fit #2") when several calls share it."""
        shorts = [_short(record.name) for record in self.stages]
        counts, seen = Counter(shorts), Counter[str]()
        labels = []
        for short in shorts:
            seen[short] += 1
            labels.append(f"{short} #{seen[short]}" if counts[short] > 1 else short)
        return labels

    def labelled(self) -> list[tuple[StageRecord, str]]:
        """Each record with its label."""
        return list(zip(self.stages, self.labels(), strict=True))

    def explain(self) -> str:
        """One line per call: cached, or ran and why, or failed and with what, or skipped and for what."""
        return "\n".join(record.line(label) for record, label in self.labelled())

    def summary(self) -> str:
        """One line: "12 stages: 9 cached, 3 ran, 0 failed, $0.04" (skipped and cancelled when there are)."""
        counts = Counter(record.status for record in self.stages)
        parts = [f"{counts[s]} {s}" for s in ("cached", "ran", "failed")]
        parts += [f"{counts[s]} {s}" for s in ("skipped", "cancelled") if counts[s]]
        return f"{plural(len(self.stages), 'stage')}: {', '.join(parts)}, ${self.cost:.2f}"

    def timeline(self, filename: str | os.PathLike[str] | None = None) -> Any:
        """A Gantt chart of the run by worker, coloured by status: a matplotlib Figure (saved to ``filename``
        when given) when matplotlib is installed, else the text timeline (written to ``filename`` when given)."""
        bars = [
            Bar(label, record.status, record.worker, record.started, record.ended) for record, label in self.labelled()
        ]
        title = f"{self.name} on {self.backend}: {self.summary()}"
        if matplotlib_available():
            return draw_figure(bars, self.started, self.ended, title, filename)
        text = draw_text(bars, self.started, self.ended, title)
        if filename is not None:
            Path(filename).write_text(text + "\n", encoding="utf-8")
        return text

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per call: label, name, call, status, started, ended (UTC times),
        seconds, worker, shape, cost, nbytes, key, why (joined by "; ") and error. Needs pandas."""
        try:
            pandas: Any = importlib.import_module("pandas")
        except ImportError as exc:
            raise ImportError("RunReport.to_dataframe() needs pandas: pip install pandas") from exc
        rows = []
        for record, label in self.labelled():
            row = {"label": label, **record.to_json(), "why": "; ".join(record.why)}
            del row["fingerprint"]
            rows.append(row)
        frame = pandas.DataFrame(rows, columns=_COLUMNS)
        for column in ("started", "ended"):
            frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def _repr_html_(self) -> str:
        """A small table for notebooks: each call's status, time, worker, cost and why."""
        head = "".join(f"<th>{name}</th>" for name in ("stage", "status", "seconds", "worker", "cost", "why"))
        rows = []
        for record, label in self.labelled():
            cost = "" if record.cost is None else f"${record.cost:.4f}"
            why = "; ".join(record.why) or _first_line(record.error)
            cells = (label, record.status, f"{record.seconds:.2f}", record.worker or "", cost, why)
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
        caption = html.escape(f"{self.name} on {self.backend}: {self.summary()}")
        return f"<table><caption>{caption}</caption><tr>{head}</tr>{''.join(rows)}</table>"

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types (what ``save_run`` writes)."""
        out = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}
        out["stages"] = [record.to_json() for record in self.stages]
        out["job_ids"] = list(self.job_ids)
        return {"format": _FORMAT, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunReport:
        """The inverse of ``to_json``; a record of another format is refused with ValueError."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"run record format {data.get('format')!r}, not {_FORMAT}")
        known = {spec.name for spec in dataclasses.fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["stages"] = [StageRecord.from_json(record) for record in data.get("stages", [])]
        return cls(**values)


_COLUMNS = [
    "label", "name", "call", "status", "started", "ended", "seconds", "worker", "shape", "cost", "nbytes", "key",
    "why", "error",
]  # fmt: skip


def explain_changes(report: RunReport, previous: RunReport | None) -> None:
    """Fill ``why`` of each call of ``report`` that ran: what changed in its fingerprint since the call of the
    same call path in ``previous`` (one line per change), or why there is nothing to compare it with."""
    before = {record.call: record for record in previous.stages} if previous is not None else {}
    for record in report.stages:
        if record.status != "ran":
            continue
        if record.key is None:
            record.why = [_CACHE_OFF]
        elif record.fingerprint is not None:
            record.why = _why(record.fingerprint, before.get(record.call))


def _why(fingerprint: dict[str, Any], old: StageRecord | None) -> list[str]:
    """Why a call with this fingerprint ran, given the same call's record in the previous run."""
    if old is None:
        return [_NO_PREVIOUS]
    if old.fingerprint is None:
        return ["the previous run of this call had its cache off"]
    changes = Fingerprint.from_json(fingerprint).diff(Fingerprint.from_json(old.fingerprint))
    if changes:
        return [str(change) for change in changes]
    if old.status in ("failed", "skipped", "cancelled"):
        return [f"nothing changed; the previous run of this call {old.status}"]
    return ["nothing changed; its cache entry was missing (cleared, expired or unreadable)"]


# ---------------------------------------------------------------------------- records on disk


def runs_dir() -> Path:
    """Where the run records are: ``<cache_dir()>/stages/runs``."""
    return cache_dir() / "stages" / "runs"


def _slug(name: str) -> str:
    """A file name for pipeline ``name``; a name that is not one already gets a digest of it, so two names
    that slug alike ("a b", "a-b") do not share a record."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    if slug == name:
        return slug
    return f"{slug or 'run'}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def save_run(report: RunReport) -> Path:
    """Write ``report`` as the last run of its pipeline (atomically: readers see the old or the new record)."""
    text = json.dumps(report.to_json(), indent=1, default=str, ensure_ascii=False)
    key = f"{_slug(report.name)}.json"
    LocalStore(runs_dir()).put(key, text.encode())
    return runs_dir() / key


def load_run(name: str) -> RunReport | None:
    """The saved last run of pipeline ``name``; None when there is none (or it cannot be read: one warning)."""
    path = runs_dir() / f"{_slug(name)}.json"
    try:
        report = RunReport.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        warn(f"the run record {path} cannot be read ({exc}); it is ignored and replaced by the next run")
        return None
    return report if report.name == name else None


def saved_names() -> list[str]:
    """The names of the pipelines with a saved run, sorted."""
    names = []
    for path in sorted(runs_dir().glob("*.json")):
        try:
            name = json.loads(path.read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            continue  # not a record: not a name
        if isinstance(name, str):
            names.append(name)
    return sorted(names)


_last: RunReport | None = None
_last_lock = threading.Lock()


def set_last_run(report: RunReport) -> None:
    """Remember ``report`` as this process's last run (``last_run()`` returns it)."""
    global _last
    with _last_lock:
        _last = report


def last_run(name: str | None = None) -> RunReport | None:
    """This process's last run; with ``name``, the last run of that pipeline (this process's, else the saved
    one). None when there is none."""
    with _last_lock:
        mine = _last
    if name is None or (mine is not None and mine.name == name):
        return mine
    return load_run(name)


def explain_saved(name: str, stage: str | None = None, as_json: bool = False) -> str:
    """What ``cloudburst cache why NAME [--stage S] [--json]`` prints: the saved last run of pipeline ``name``,
    a call per line (``stage``: only the calls of that stage, by "module:function", function or call path)."""
    report = load_run(name)
    if report is None:
        known = saved_names()
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none yet"
        raise ConfigurationError(
            f"no run of pipeline {name!r} is recorded in {runs_dir()}: `cloudburst cache why NAME` explains the "
            f"last run of cb.compute(..., name=NAME); recorded names: {listed}"
        )
    chosen = [
        (record, label)
        for record, label in report.labelled()
        if stage is None or stage in (record.name, _short(record.name), record.call, label)
    ]
    if not chosen:
        stages = ", ".join(sorted({record.name for record in report.stages})) or "none"
        raise ConfigurationError(f"the last run of {name!r} has no call of stage {stage!r}; its stages: {stages}")
    if as_json:
        out = {key: value for key, value in report.to_json().items() if key != "stages"}
        out["stages"] = [{"label": label, **_without_fingerprint(record)} for record, label in chosen]
        return json.dumps(out, indent=1, default=str, ensure_ascii=False)
    when = datetime.datetime.fromtimestamp(report.started).isoformat(sep=" ", timespec="seconds")
    head = f"{report.name} on {report.backend}, {when}, {report.ended - report.started:.1f} s: {report.summary()}"
    return "\n".join([head, *(record.line(label) for record, label in chosen)])


def _without_fingerprint(record: StageRecord) -> dict[str, Any]:
    out = record.to_json()
    del out["fingerprint"]
    return out


# ---------------------------------------------------------------------------- small texts


def progress_text(done: int, total: int, running: int, cached: int, failed: int, cost: float | None) -> str:
    """The progress line of a run: "stages 23/40 · 3 running · 14 cached · 1 failed · $0.04" (no cost when
    ``cost`` is None: backends that do not bill)."""
    parts = [f"stages {done}/{total}", f"{running} running", f"{cached} cached", f"{failed} failed"]
    if cost is not None:
        parts.append(f"${cost:.2f}")
    return " · ".join(parts)


def _short(name: str) -> str:
    """ "pipeline:fit_linear" → "fit_linear"; "a.b:C.fit" → "C.fit"."""
    return name.rpartition(":")[2] or name


def _first_line(error: str | None) -> str:
    """The line of an error that says what went wrong: the first, or the last of a traceback."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]
