"""The written contract (backends/base.py) names what the worker really writes."""

from __future__ import annotations

import pytest

from cloudburst.backends import base
from cloudburst.worker import loop


def test_the_reason_line_the_worker_writes_is_the_one_launchers_read(capfd: pytest.CaptureFixture[str]) -> None:
    loop.say_exit_reason("idle for 61 s (idle_timeout=60)")
    assert base.reason_in_log(capfd.readouterr().err) == "idle for 61 s (idle_timeout=60)"


def test_reason_in_log_takes_the_last_reason_line() -> None:
    tail = (
        "cloudburst-worker w1: started for job abc\n"
        f"{base.EXIT_REASON_PREFIX}the client process is gone\n"
        "some output\n"
        f"{base.EXIT_REASON_PREFIX}idle for 61 s (idle_timeout=60)\n"
        "more output"
    )
    assert base.reason_in_log(tail) == "idle for 61 s (idle_timeout=60)"
    assert base.reason_in_log("Fatal Python error: Segmentation fault\n") is None
    assert base.WorkerExit("w1", 0, "", tail).got_ready
