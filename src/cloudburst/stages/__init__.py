"""Pipelines of stages: functions wired into a graph by calling them, each stage on workers of its own size,
results memoized across runs with keys that follow the code, the globals and the inputs.

``stage`` makes a ``Stage``; calling one makes a ``Node``; ``compute`` runs what nodes need (``runner``);
``last_run`` is the report of the last run. The guide is ``docs/stages.md``.
"""

from __future__ import annotations

from .api import Node, Stage, StageOptions, stage
from .report import RunReport, StageRecord, last_run
from .runner import compute

__all__ = ["Node", "RunReport", "Stage", "StageOptions", "StageRecord", "compute", "last_run", "stage"]
