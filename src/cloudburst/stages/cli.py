"""``cloudburst cache``: the stage cache of a backend, by stage; clearing it; why the stages of a run ran.

::

    cloudburst cache list  [--backend B] [--stage S] [--json]                per stage: entries, bytes, newest, oldest
    cloudburst cache clear [--backend B] [--stage S] [--older-than 7d] [--yes]
    cloudburst cache why NAME [--stage S] [--json]                           cached or run, and what changed
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from ..core.words import plural
from .cache import open_cache
from .cacheadmin import StageSummary, clear, parse_age, summarize

__all__ = ["cache_command"]

_BACKEND = click.option("--backend", default="local", show_default=True, help="whose cache: local, fargate, ...")
_NAMESPACE = click.option("--namespace", default=None, help="cache namespace (default: the cache_namespace setting)")
_STAGE = click.option("--stage", default=None, help="only this stage ('module:function', or its name=)")


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).isoformat(timespec="seconds")


def _row(summary: StageSummary) -> dict[str, Any]:
    return {
        "entries": summary.entries,
        "bytes": summary.bytes,
        "newest": _when(summary.newest) if summary.entries else None,
        "oldest": _when(summary.oldest) if summary.entries else None,
    }


@click.group("cache")
def cache_command() -> None:
    """The stage cache: results of pipeline stages kept across runs."""


@cache_command.command("list")
@_BACKEND
@_NAMESPACE
@_STAGE
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cache_list(backend: str, namespace: str | None, stage: str | None, as_json: bool) -> None:
    """Each stage's entries: how many, their bytes, the newest and the oldest; and the blobs they share."""
    cache = open_cache(backend, {}, namespace)
    try:
        stages, blobs = summarize(cache, stage)
    finally:
        cache.close()
    if as_json:
        out = {"where": cache.where, "stages": {s.stage: _row(s) for s in stages}, "blobs": _row(blobs)}
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"stage cache {cache.where}")
    if not stages:
        click.echo("  no entries" + (f" of stage {stage}" if stage else ""))
    for s in stages:
        click.echo(
            f"  {s.stage}: {plural(s.entries, 'entry', 'entries')}, {s.bytes:,} bytes, "
            f"newest {_when(s.newest)}, oldest {_when(s.oldest)}"
        )
    click.echo(f"  blobs: {plural(blobs.entries, 'blob')}, {blobs.bytes:,} bytes")


@cache_command.command("clear")
@_BACKEND
@_NAMESPACE
@_STAGE
@click.option("--older-than", default=None, help="only entries last written longer ago than this: 7d, 12h, 30m, 2w")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def cache_clear(backend: str, namespace: str | None, stage: str | None, older_than: str | None, yes: bool) -> None:
    """Delete entries (of a stage, older than an age, or all), and the blobs no remaining entry needs."""
    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    cache = open_cache(backend, {}, namespace)
    try:
        which = (f"the entries of stage {stage}" if stage else "the entries") + (
            f" older than {older_than}" if older_than else ""
        )
        if not yes and not click.confirm(f"Delete {which} in the stage cache {cache.where}?"):
            raise click.Abort()
        entries, blobs = clear(cache, stage, age)
    finally:
        cache.close()
    click.echo(f"deleted {plural(entries, 'entry', 'entries')} and {plural(blobs, 'blob')} from {cache.where}")


@cache_command.command("why")
@click.argument("name")
@_STAGE
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cache_why(name: str, stage: str | None, as_json: bool) -> None:
    """For each stage of the last run of pipeline NAME: cached or run, and if run, what changed."""
    try:
        from .report import explain_saved  # type: ignore[import-not-found,attr-defined,unused-ignore]  # the run records' module
    except ImportError as exc:
        raise click.ClickException(
            "`cloudburst cache why` needs the run records (cloudburst.stages.report), which this cloudburst "
            "does not have yet"
        ) from exc
    click.echo(explain_saved(name, stage, as_json))
