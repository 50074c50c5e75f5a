"""Shared fixtures. ``backend`` is parametrised so the behaviour suite runs against every backend."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cloudburst

BACKENDS = ["local"]


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_nothing_left(pids: dict[str, int], job_dir: Path | None) -> None:
    assert wait_until(lambda: all(process_gone(p) for p in pids.values()), timeout=10), (
        f"worker processes still running: {pids}"
    )
    if job_dir is not None:
        assert not job_dir.exists(), f"job data left behind in {job_dir}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_executor(backend: str) -> Iterator[Callable[..., cloudburst.Executor]]:
    """Create executors on the backend under test; afterwards assert that nothing is left behind."""
    made: list[tuple[cloudburst.Executor, dict[str, int], Path | None]] = []

    def make(*args: Any, **kwargs: Any) -> cloudburst.Executor:
        kwargs.setdefault("backend", backend)
        ex = cloudburst.Executor(*args, **kwargs)
        made.append((ex, ex._job.worker_pids(), getattr(ex._job.backend, "_root", None)))
        return ex

    yield make
    for ex, pids, job_dir in made:
        pids.update(ex._job.worker_pids())
        ex.shutdown(wait=False, cancel_futures=True)
        ex.terminate()
        assert_nothing_left(pids, job_dir)


@pytest.fixture
def executor(make_executor: Callable[..., cloudburst.Executor]) -> cloudburst.Executor:
    return make_executor(2)


@pytest.fixture
def client_pid() -> int:
    return os.getpid()
