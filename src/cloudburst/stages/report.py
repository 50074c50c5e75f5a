"""Reports of stage runs (minimal interim version)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
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
    "save_run",
    "set_last_run",
]


@dataclass
class StageRecord:
    """One stage call of a run."""

    name: str
    call: str
    status: Literal["cached", "ran", "failed", "skipped", "cancelled"]
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


@dataclass
class RunReport:
    """What a compute did, call by call."""

    name: str
    backend: str
    started: float
    ended: float
    stages: list[StageRecord]
    cost: float = 0.0
    job_ids: list[str] = field(default_factory=list)

    def explain(self) -> str:
        """One line per call: cached, or ran and why."""
        lines = []
        for record in self.stages:
            short = record.name.split(":")[-1]
            why = "; ".join(record.why)
            lines.append(f"{short}: {record.status}" + (f": {why}" if why else ""))
        return "\n".join(lines)


_LAST: list[RunReport] = []


def _path(name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:100]
    return cache_dir() / "stages" / "runs" / f"{slug}.json"


def explain_changes(report: RunReport, previous: RunReport | None) -> None:
    """Fill ``why`` of every call that ran: what changed since ``previous``."""
    before = {record.call: record for record in previous.stages} if previous else {}
    for record in report.stages:
        if record.status != "ran" or record.fingerprint is None:
            continue
        old = before.get(record.call)
        if old is None or old.fingerprint is None:
            record.why.append("no previous run of this call recorded")
            continue
        changes = Fingerprint.from_json(record.fingerprint).diff(Fingerprint.from_json(old.fingerprint))
        record.why.extend(str(change) for change in changes)


def save_run(report: RunReport) -> Path:
    """Keep ``report`` as the last run of its name."""
    path = _path(report.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run-")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(report), fh, default=str)
    os.replace(tmp, path)
    return path


def load_run(name: str) -> RunReport | None:
    """The last saved run named ``name``."""
    try:
        data = json.loads(_path(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    data["stages"] = [StageRecord(**record) for record in data["stages"]]
    return RunReport(**data)


def set_last_run(report: RunReport) -> None:
    """Remember the report of this process's last compute."""
    _LAST[:] = [report]


def last_run(name: str | None = None) -> RunReport | None:
    """This process's last report, or the saved one named ``name``."""
    if name is not None:
        return load_run(name)
    return _LAST[0] if _LAST else None


def explain_saved(name: str, stage: str | None = None, as_json: bool = False) -> str:
    """The explanation of the last saved run named ``name``."""
    report = load_run(name)
    if report is None:
        raise ConfigurationError(f"no run named {name!r} is recorded")
    return report.explain()


def progress_text(done: int, total: int, running: int, cached: int, failed: int, cost: float) -> str:
    """The progress line of a run."""
    return f"stages {done}/{total} · {running} running · {cached} cached · {failed} failed · ${cost:.2f}"
