"""The ``cloudburst`` command.

::

    cloudburst jobs [--json]          detached jobs recorded on this machine, with their progress
    cloudburst results JOB [--json]   wait for a detached job and print its results
    cloudburst version
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import click

from . import __version__
from .detached import DetachedJob, attach, jobs

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run parallel Python locally, or burst it to AWS Fargate."""


def _describe(job: DetachedJob) -> dict[str, Any]:
    if not job.collected:
        try:
            job.poll(wait=0)
        except Exception as exc:  # an unreachable account must not hide the other jobs
            click.echo(f"cloudburst: could not reach job {job.job_id[:12]}: {exc}", err=True)
    done, total = job.progress()
    state = "collected" if job.collected else ("finished" if done == total else "running")
    created = datetime.datetime.fromtimestamp(float(job.record.get("created", 0)), tz=datetime.timezone.utc)
    return {
        "job_id": job.job_id,
        "backend": job.record.get("backend"),
        "created": created.isoformat(timespec="seconds"),
        "items": total,
        "done": done,
        "state": state,
    }


@main.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def jobs_command(as_json: bool) -> None:
    """List detached jobs and how far each has got."""
    rows = [_describe(job) for job in jobs()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no detached jobs on this machine")
        return
    click.echo(f"{'job':14}{'backend':10}{'created (UTC)':27}{'done':>16}  state")
    for r in rows:
        click.echo(
            f"{r['job_id'][:12]:14}{r['backend']:10}{r['created']:27}{r['done']:>7,} / {r['items']:<6,}  {r['state']}"
        )


@main.command("results")
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="seconds to wait for unfinished items")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON (values must be JSON-able)")
def results_command(job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a detached job, then print its results in item order."""
    values = attach(job_id).results(timeout=timeout, errors="return")
    shown = [repr(v) if isinstance(v, BaseException) else v for v in values]
    if as_json:
        click.echo(json.dumps(shown, default=repr))
    else:
        for index, value in enumerate(shown):
            click.echo(f"{index}\t{value}")


@main.command("version")
def version_command() -> None:
    """Print cloudburst's version."""
    click.echo(f"cloudburst {__version__} (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
