"""What ``cloudburst cache list`` and ``cloudburst cache clear`` do: sum up a stage cache by stage, and delete
entries (by stage, by age) and the blobs no entry left needs.

A blob is deleted only when no remaining entry names it and, unless the whole cache is cleared, it is older
than an hour: a run that is recording copies its blobs before it writes its manifest, and they must not go in
between.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..backends.cachebase import ENTRIES, CacheObject, stage_slug
from .cache import StageCache

__all__ = ["StageSummary", "clear", "parse_age", "summarize"]

_BLOBS = "blobs/"
_BLOB_GRACE_SECONDS = 3600.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_age(text: str) -> float:
    """Seconds in an age such as ``7d``, ``12h``, ``30m``, ``90s`` or ``2w``; ValueError naming the forms."""
    match = _AGE.match(text.lower())
    if not match:
        raise ValueError(f"{text!r} is not an age: use a number and a unit, e.g. 7d, 12h, 30m, 90s or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class StageSummary:
    """One stage's entries: how many, their bytes (manifests, with the small values inline in them), and the
    times of the newest and oldest (epoch seconds)."""

    stage: str
    entries: int = 0
    bytes: int = 0
    newest: float = 0.0
    oldest: float = 0.0

    def add(self, item: CacheObject) -> None:
        self.entries += 1
        self.bytes += item.size
        self.newest = max(self.newest, item.modified)
        self.oldest = min(self.oldest, item.modified) if self.oldest else item.modified


def _entries(cache: StageCache, stage: str | None) -> Iterable[CacheObject]:
    return cache.store.list(f"{ENTRIES}{stage_slug(stage)}/" if stage else ENTRIES)


def summarize(cache: StageCache, stage: str | None = None) -> tuple[list[StageSummary], StageSummary]:
    """Per stage (by its folder name), and the blobs all of them share (``stage`` "blobs")."""
    found: dict[str, StageSummary] = {}
    for item in _entries(cache, stage):
        slug = item.key[len(ENTRIES) :].split("/", 1)[0]
        found.setdefault(slug, StageSummary(slug)).add(item)
    blobs = StageSummary("blobs")
    for item in cache.store.list(_BLOBS):
        blobs.add(item)
    return sorted(found.values(), key=lambda s: s.stage), blobs


def clear(cache: StageCache, stage: str | None = None, older_than: float | None = None) -> tuple[int, int]:
    """Delete the entries of ``stage`` (None: every stage) last written more than ``older_than`` seconds ago
    (None: all), then the blobs no remaining entry needs (those of the last hour only when everything goes).
    Returns (entries deleted, blobs deleted)."""
    now = time.time()
    grace = 0.0 if stage is None and older_than is None else _BLOB_GRACE_SECONDS
    doomed: list[str] = []
    kept: list[str] = []
    for item in _entries(cache, None):
        matches = stage is None or item.key.startswith(f"{ENTRIES}{stage_slug(stage)}/")
        old = older_than is None or item.modified < now - older_than
        (doomed if matches and old else kept).append(item.key)
    cache.store.delete(doomed)
    needed = {blob.key for name in kept for blob in (cache.blobs_of(name) or ())}
    unused = [item.key for item in cache.store.list(_BLOBS) if item.key not in needed and item.modified <= now - grace]
    cache.store.delete(unused)
    return len(doomed), len(unused)
