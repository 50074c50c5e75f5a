"""The failure table of the ``cloudburst`` command: every command, in a state where it must fail, ends with
one line that names the problem and its fix, and a non-zero exit status; never a traceback.

Each row runs the real command in a fresh process, with no AWS credentials, no region and its own
settings and job folders, so nothing on this machine (nor the emulator of the test session) leaks in.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import users_environment

# ---------------------------------------------------------------------------- states


def fresh(home: Path) -> None:
    """A machine where `cloudburst setup` never ran and AWS is not configured."""


def broken_config(home: Path) -> None:
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text("region = [unclosed\n")


def set_up_without_credentials(home: Path) -> None:
    """Set up once, but the AWS credentials are gone (expired, another shell)."""
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text(
        '[aws]\nregion = "us-east-1"\nbucket = "cloudburst-123456789012-us-east-1"\ncluster = "cloudburst"\n'
    )


def damaged_job_record(home: Path) -> None:
    (home / "jobs" / "0123456789abcdef").mkdir(parents=True)
    (home / "jobs" / "0123456789abcdef" / "job.json").write_text('{"job_id": ')


def ssh_requirement(home: Path) -> None:
    (home / "requirements.txt").write_text("tool @ git+ssh://git@example.com/team/tool.git\n")


@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]
    state: Callable[[Path], None]
    says: str  # a regular expression the one line must match: the problem and its fix


NO_REGION = r"no AWS region is set: run `cloudburst setup --region REGION`"
NO_CREDENTIALS = r"no AWS credentials found[:.] [Cc]onfigure them"
NOT_SET_UP = r"not set up here: run `cloudburst setup`"
BAD_TOML = r"config\.toml is not valid TOML .*; fix it or delete it and run `cloudburst setup`"

ROWS = {
    "quota before setup": Row(("quota",), fresh, NO_REGION),
    "quota, broken settings": Row(("quota",), broken_config, BAD_TOML),
    "quota, no credentials": Row(("quota", "--request", "64"), set_up_without_credentials, NO_CREDENTIALS),
    "status before setup": Row(("status",), fresh, NOT_SET_UP),
    "status, no credentials": Row(("status",), set_up_without_credentials, NO_CREDENTIALS),
    "status, broken settings": Row(("status",), broken_config, BAD_TOML),
    "logs before setup": Row(("logs", "abc"), fresh, NOT_SET_UP),
    "logs, no credentials": Row(("logs", "abc"), set_up_without_credentials, NO_CREDENTIALS),
    "cleanup, no credentials": Row(("cleanup", "--yes"), set_up_without_credentials, NO_CREDENTIALS),
    "setup, no credentials": Row(("setup", "--yes", "--region", "us-east-1"), fresh, NO_CREDENTIALS),
    "setup, no region": Row(("setup", "--yes"), fresh, r"no AWS credentials|no AWS region"),
    "teardown, no credentials": Row(("teardown", "--yes", "--region", "us-east-1"), fresh, NO_CREDENTIALS),
    "doctor, broken settings": Row(("doctor",), broken_config, BAD_TOML),
    "config, broken settings": Row(("config",), broken_config, BAD_TOML),
    "config set, a cpu Fargate lacks": Row(
        ("config", "set", "cpu", "3"), fresh, r"use one of 0\.25, 0\.5, 1, 2, 4, 8, 16"
    ),
    "config set, misspelt": Row(("config", "set", "memmory", "2GB"), fresh, r"did you mean 'memory'\?"),
    "config set, memory in MiB": Row(
        ("config", "set", "memory", "2048"), fresh, r"did you mean memory='2048MB' \(that is '2GB'\)\?"
    ),
    "config unset, misspelt": Row(("config", "unset", "wrokers"), fresh, r"did you mean 'workers'\?"),
    "env show, an ssh requirement": Row(
        ("env", "show", "--requirements", "requirements.txt"), ssh_requirement, r"over SSH.*use its https:// URL"
    ),
    "env build before setup": Row(("env", "build"), fresh, NOT_SET_UP),
    "env list, no credentials": Row(("env", "list"), set_up_without_credentials, NO_CREDENTIALS),
    "env prune before setup": Row(("env", "prune"), fresh, NOT_SET_UP),
    "jobs, a damaged record": Row(("jobs",), damaged_job_record, r"cannot be read .*delete .*0123456789abcdef"),
    "results of an unknown job": Row(("results", "abc"), fresh, r"no detached job matches 'abc'.*known jobs"),
    "results, a damaged record": Row(("results", "0123"), damaged_job_record, r"cannot be read .*delete"),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=list(ROWS))
def test_a_failing_command_says_one_line_with_the_fix_and_exits_non_zero(row: Row, tmp_path: Path) -> None:
    row.state(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", *row.args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=users_environment(tmp_path),
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.search(row.says, lines[0]), lines[0]
    assert done.stdout == "", done.stdout
