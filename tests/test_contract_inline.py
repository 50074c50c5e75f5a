"""The backend contract suite against the inline backend (calls run on threads of the client's process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.testing import BackendContract, tasks


class TestInlineContract(BackendContract):
    isolated_workers = False  # one process: nothing can die alone, and objects load as in the client
    relays_output = False  # output goes straight to the terminal (so that breakpoint() works)

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> tuple[str, dict[str, Any]]:
        return "inline", {}


def test_calls_run_in_the_clients_process() -> None:
    assert cloudburst.map(tasks.pid, range(3), backend="inline") == [os.getpid()] * 3


def test_breakpoint_stops_in_the_clients_terminal(tmp_path: Path) -> None:
    """pdb, entered by breakpoint() inside the mapped function, reads the client's stdin and writes its stdout."""
    script = tmp_path / "debug_me.py"
    script.write_text(
        "import cloudburst\n\n"
        "def f(x):\n"
        "    secret = x * 100\n"
        "    breakpoint()\n"
        "    return secret\n\n"
        "if __name__ == '__main__':\n"
        "    print('RESULT', cloudburst.map(f, [1, 2], backend='inline'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONBREAKPOINT"}
    done = subprocess.run(
        [sys.executable, str(script)],
        input="p secret + 1\nc\np secret + 2\nc\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "(Pdb)" in done.stdout
    assert "101" in done.stdout and "202" in done.stdout  # the prompt saw each call's locals
    assert "RESULT [100, 200]" in done.stdout
