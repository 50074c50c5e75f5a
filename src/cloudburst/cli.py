"""The ``cloudburst`` command: the root group and the core's commands; each backend adds its own.

::

    cloudburst config [--json]        every setting (the core's and every backend's) and where it came from
    cloudburst config set KEY VALUE   check and save a setting
    cloudburst config unset KEY       remove a setting from the file
    cloudburst jobs [--json]          detached jobs recorded on this machine, with their progress
    cloudburst results JOB [--json]   wait for a detached job and print its results
    cloudburst cache list|clear|why  the stage cache, by stage (``stages/cli.py``)
    cloudburst version

The commands of a backend come from the module its registration names (``cli``, see
``cloudburst.backends``); the AWS backend's are ``setup``, ``doctor``, ``teardown``, ``selftest``,
``quota``, ``status``, ``logs``, ``cleanup`` and ``env`` (``backends/aws/commands.py``).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import click

from . import __version__, backends
from .config import userconfig
from .detached import DetachedJob, attach, jobs
from .errors import CloudburstError
from .stages.cli import cache_command

__all__ = ["main"]


def _one_line(message: str) -> str:
    """The first paragraph of ``message`` on one line (the fix is in it; a traceback is not)."""
    first = message.strip().split("\n\n", 1)[0]
    return " ".join(first.split())


def _explain(exc: BaseException) -> str | None:
    """One line naming the problem and its fix, for cloudburst's errors and a backend's; None for anything else."""
    if isinstance(exc, CloudburstError):
        return _one_line(str(exc))
    for extension in backends.cli_extensions():
        explained: str | None = extension.explain(exc)
        if explained is not None:
            return _one_line(explained)
    return None


class _Commands(click.Group):
    """The root group: the core's commands and every registered backend's; an error of cloudburst's or of a
    backend's kind ends any command with one line and exit 1."""

    def _backend_commands(self) -> dict[str, click.Command]:
        """The commands the registered backends add (asked each time: a backend may be registered later)."""
        return {c.name or "": c for extension in backends.cli_extensions() for c in extension.COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._backend_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._backend_commands().get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            explained = _explain(exc)
            if explained is None:
                raise  # a defect of cloudburst's own: its traceback is what a bug report needs
            raise click.ClickException(explained) from exc


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
    try:
        values = attach(job_id).results(timeout=timeout, errors="return")
    except TimeoutError as exc:
        raise click.ClickException(
            f"{exc}; run `cloudburst results {job_id}` again later, or give a longer --timeout"
        ) from exc
    shown = [repr(v) if isinstance(v, BaseException) else v for v in values]
    if as_json:
        click.echo(json.dumps(shown, default=repr))
    else:
        for index, value in enumerate(shown):
            click.echo(f"{index}\t{value}")


@main.group("config", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def config_command(ctx: click.Context, as_json: bool) -> None:
    """Show every setting, its value and where it came from."""
    if ctx.invoked_subcommand is not None:
        return
    values = userconfig.resolve()
    if as_json:
        click.echo(json.dumps({v.name: {"value": v.value, "source": v.source} for v in values.values()}, indent=1))
        return
    click.echo(f"# {userconfig.config_path()}")
    for value in values.values():
        shown = ",".join(value.value) if isinstance(value.value, list) else value.value
        click.echo(f"{value.name:22} = {shown!s:48} ({value.source})")


@config_command.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Check a setting and save it."""
    saved = userconfig.set_value(key, value)
    click.echo(f"{key} = {saved} (saved in {userconfig.config_path()})")


@config_command.command("unset")
@click.argument("key")
def config_unset(key: str) -> None:
    """Remove a setting from the file (its default applies again)."""
    userconfig.unset_value(key)
    click.echo(f"{key} removed from {userconfig.config_path()}")


@main.command("version")
def version_command() -> None:
    """Print cloudburst's version."""
    click.echo(f"cloudburst {__version__} (Python {sys.version.split()[0]})")


main.add_command(cache_command)

if __name__ == "__main__":
    main()
