"""``python -m cloudburst.emulator``: emulated AWS for the ``cloudburst`` command, and nothing left behind.

The emulator runs in its own process here (its own moto), so these tests do not disturb the session's.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudburst.emulator.__main__ import READY

from .conftest import users_environment

CLI = [sys.executable, "-m", "cloudburst.cli"]
EMULATOR = [sys.executable, "-m", "cloudburst.emulator"]


def applied(env: dict[str, str], lines: list[str]) -> dict[str, str]:
    """``env`` after the shell lines ``export K=V`` and ``unset K ...``."""
    env = dict(env)
    for line in lines:
        words = shlex.split(line)
        if words and words[0] == "export":
            name, _, value = words[1].partition("=")
            env[name] = value
        elif words and words[0] == "unset":
            for name in words[1:]:
                env.pop(name, None)
    return env


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``python -m cloudburst.emulator`` in the foreground, and the lines it printed up to READY."""
    with open(tmp_path / "emulator.err", "w") as err:
        proc = subprocess.Popen(
            EMULATOR, env=users_environment(tmp_path), stdout=subprocess.PIPE, stderr=err, text=True
        )
    printed: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(line.rstrip("\n"))
            if printed[-1] == READY:
                break
        assert printed and printed[-1] == READY, (printed, (tmp_path / "emulator.err").read_text())
        yield proc, printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


DETACHED = """
import time
import cloudburst

def nap(x):
    time.sleep(600)  # still running when the emulator is stopped, which stops it
    return x

print(cloudburst.submit_job(nap, [1, 2], workers=1))
"""


def test_the_cloudburst_command_runs_against_the_emulator_and_its_jobs_stay_there(
    emulator_process: tuple[subprocess.Popen[str], list[str]], tmp_path: Path
) -> None:
    proc, printed = emulator_process
    user = users_environment(tmp_path)
    env = applied(user, printed)
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:") and env["AWS_ACCESS_KEY_ID"].startswith("AKIA")
    folder = Path(env["CLOUDBURST_JOBS_DIR"]).parent
    assert Path(env["CLOUDBURST_CONFIG_DIR"]).parent == folder != tmp_path

    setup = run([*CLI, "setup", "--yes"], env)
    assert setup.returncode == 0 and "Nothing changed" in setup.stdout, setup.stdout + setup.stderr
    quota = run([*CLI, "quota", "--json"], env)
    assert quota.returncode == 0, quota.stderr
    assert [q["vcpus"] for q in json.loads(quota.stdout)["quotas"]] == [4000, 4000]

    client = run([sys.executable, "-c", DETACHED], env)
    assert client.returncode == 0, client.stderr
    job_id = client.stdout.split()[-1]
    listed = run([*CLI, "jobs", "--json"], env)
    assert [(row["job_id"], row["state"]) for row in json.loads(listed.stdout)] == [(job_id, "running")], listed
    waited = run([*CLI, "results", job_id, "--timeout", "0.5"], env)
    assert waited.returncode == 1 and "Traceback" not in waited.stderr, waited.stderr
    assert waited.stderr.splitlines() == [
        f"Error: job {job_id}: 0 of 2 items finished within the timeout; run `cloudburst results {job_id}` again "
        "later, or give a longer --timeout"
    ]

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 0
    assert not folder.exists(), "the emulator's folder outlived it"
    # The user's own `cloudburst jobs` never saw the emulated job.
    mine = run([*CLI, "jobs", "--json"], user)
    assert mine.returncode == 0 and json.loads(mine.stdout) == [], mine.stdout + mine.stderr
    assert not (tmp_path / "jobs").exists()


def test_a_command_runs_in_the_emulated_environment_and_its_exit_status_is_kept(tmp_path: Path) -> None:
    show = "import os, sys; print(os.environ['AWS_ENDPOINT_URL'], os.environ['CLOUDBURST_JOBS_DIR']); sys.exit(7)"
    done = run([*EMULATOR, "--", sys.executable, "-c", show], users_environment(tmp_path))
    assert done.returncode == 7, done.stderr
    endpoint, jobs = done.stdout.split()
    assert endpoint.startswith("http://127.0.0.1:") and "EMULATED AWS" in done.stderr
    assert not Path(jobs).exists() and not Path(jobs).parent.exists(), "the emulator's folder outlived it"


def test_a_subshell_runs_in_the_emulated_environment(tmp_path: Path) -> None:
    env = {**users_environment(tmp_path), "SHELL": "/bin/sh"}
    script = f"{shlex.join(CLI)} jobs --json && echo endpoint=$AWS_ENDPOINT_URL\nexit 5\n"
    done = run([*EMULATOR, "--shell"], env, stdin=script)
    assert done.returncode == 5, done.stderr
    assert "[]" in done.stdout and "endpoint=http://127.0.0.1:" in done.stdout, done.stdout + done.stderr
