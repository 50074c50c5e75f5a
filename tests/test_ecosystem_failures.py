"""The failure table of the ecosystem front ends: ``cloudburst.Pool``, the joblib backend and ``cloudburst.imap``.

Each row is a way a user gets it wrong, or a call fails: the error it raises (type and message, naming the
fix), raised before any worker starts where the input is bad, and the work around it kept. The rows are also
in docs/troubleshooting.md.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import joblib
import pytest

import cloudburst
from cloudburst.joblib_backend import CloudburstBackend
from cloudburst.joblib_hook import enable

from .conftest import process_gone, wait_until

enable()


class Row(NamedTuple):
    name: str
    action: Callable[[], Any]
    error: type[BaseException]
    match: str


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise KeyError(f"item {x}")
    return x


def failing_initializer() -> None:
    raise RuntimeError("the initializer could not open its database")


def sleepy(x: float) -> float:
    time.sleep(x)
    return x


def _closed_pool_map() -> Any:
    pool = cloudburst.Pool(1)
    pool.close()
    try:
        return pool.map(square, range(3))
    finally:
        pool.join()


def _join_a_running_pool() -> Any:
    pool = cloudburst.Pool(1)
    try:
        return pool.join()
    finally:
        pool.terminate()


def _get_before_ready() -> Any:
    with cloudburst.Pool(1) as pool:
        return pool.apply_async(sleepy, (5.0,)).get(timeout=0.2)


def _successful_before_ready() -> Any:
    with cloudburst.Pool(1) as pool:
        return pool.apply_async(sleepy, (5.0,)).successful()


def _with_initializer(initializer: Callable[[], None]) -> Any:
    with cloudburst.Pool(1, initializer=initializer) as pool:
        return pool.map(square, range(4))


def _parallel(**config: Any) -> Callable[[], Any]:
    def run() -> Any:
        with joblib.parallel_config(backend="cloudburst", **config):
            return joblib.Parallel()(joblib.delayed(square)(i) for i in range(3))

    return run


def _imap(*args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: list(cloudburst.imap(*args, **kwargs))


POOL_ROWS = [
    Row("Pool: no processes", lambda: cloudburst.Pool(0), ValueError, "Number of processes must be at least 1"),
    Row("Pool: maxtasksperchild=0", lambda: cloudburst.Pool(1, maxtasksperchild=0), ValueError, "maxtasksperchild"),
    Row("Pool: initializer not callable", lambda: cloudburst.Pool(1, initializer=5), TypeError, "initializer"),  # type: ignore[arg-type]
    Row("Pool: misspelt option", lambda: cloudburst.Pool(1, cpuz=2), cloudburst.UnknownParameterError, "cpuz"),
    Row("Pool: map after close", _closed_pool_map, ValueError, "Pool not running"),
    Row("Pool: join while running", _join_a_running_pool, ValueError, "Pool is still running"),
    Row("Pool: get() times out", _get_before_ready, multiprocessing.TimeoutError, "not ready within 0.2 s"),
    Row("Pool: successful() too early", _successful_before_ready, ValueError, "not ready"),
    Row("Pool: an item raises", lambda: _pool_map(fail_on_three), KeyError, "item 3"),
    Row("Pool: the initializer raises", lambda: _with_initializer(failing_initializer), RuntimeError, "database"),
]

JOBLIB_ROWS = [
    Row("joblib: unknown cloudburst_backend", _parallel(n_jobs=2, cloudburst_backend="nowhere"),
        cloudburst.ConfigurationError, "'nowhere' is not known"),
    Row("joblib: executor= with options", lambda: CloudburstBackend(executor=_shared_executor(), cpu=2),
        cloudburst.ConfigurationError, "either executor= or cloudburst's options"),
    Row("joblib: backend= inside the options", lambda: CloudburstBackend(backend="fargate"),
        cloudburst.ConfigurationError, "cloudburst_backend="),
    Row("joblib: keep_warm negative", lambda: CloudburstBackend(keep_warm=-1), cloudburst.ConfigurationError,
        "keep_warm"),
    Row("joblib: misspelt option", _parallel(n_jobs=2, cpuz=2), cloudburst.UnknownParameterError, "cpuz"),
    Row("joblib: n_jobs=0", _parallel(n_jobs=0), ValueError, "n_jobs == 0"),
    Row("joblib: an item raises", lambda: _joblib_run(fail_on_three), KeyError, "item 3"),
]  # fmt: skip

IMAP_ROWS = [
    Row("imap: no iterables", _imap(square), TypeError, "at least one iterable"),
    Row("imap: bad Executor option", _imap(square, [1], workers=0), cloudburst.ConfigurationError, "workers=0"),
    Row("imap: chunksize=0", _imap(square, [1], chunksize=0), cloudburst.ConfigurationError, "chunksize=0"),
    Row("imap: an item raises", _imap(fail_on_three, range(10), workers=1), KeyError, "item 3"),
]  # fmt: skip

_EXECUTOR: list[cloudburst.Executor] = []


def _shared_executor() -> cloudburst.Executor:
    if not _EXECUTOR:
        _EXECUTOR.append(cloudburst.Executor(1))
    return _EXECUTOR[0]


def _pool_map(fn: Callable[[int], int]) -> Any:
    with cloudburst.Pool(2) as pool:
        return pool.map(fn, range(6))


def _joblib_run(fn: Callable[[int], int]) -> Any:
    with joblib.parallel_config(backend="cloudburst", n_jobs=2):
        return joblib.Parallel()(joblib.delayed(fn)(i) for i in range(6))


@pytest.fixture(scope="module", autouse=True)
def _close_shared() -> Iterator[None]:
    assert _shared_executor().submit(square, 2).result(timeout=60) == 4  # its threads all up before rows count them
    yield
    for ex in _EXECUTOR:
        ex.shutdown()


@pytest.mark.parametrize("row", POOL_ROWS + JOBLIB_ROWS + IMAP_ROWS, ids=lambda r: r.name)
def test_failure_row(row: Row) -> None:
    threads = threading.active_count()
    with pytest.raises(row.error, match=row.match):
        row.action()
    cloudburst.warm.shutdown()
    # Nothing left running for the failure: no thread of the front end keeps waiting.
    assert wait_until(lambda: threading.active_count() <= threads, timeout=20), [t.name for t in threading.enumerate()]


def test_a_pool_that_ran_a_failing_item_still_runs_the_rest() -> None:
    with cloudburst.Pool(2) as pool:
        async_result = pool.map_async(fail_on_three, range(6))
        async_result.wait(30)
        assert async_result.ready() and not async_result.successful()
        assert pool.map(square, range(4)) == [0, 1, 4, 9], "the pool broke on an item's exception"
        assert pool.apply(square, (7,)) == 49


def test_a_pool_whose_worker_dies_retries_its_task_where_multiprocessing_would_hang() -> None:
    with cloudburst.Pool(1, retries=1) as pool:
        pid = pool.apply(os.getpid)
        pending = pool.apply_async(sleepy, (2.0,))
        time.sleep(0.5)
        os.kill(pid, 9)
        assert pending.get(timeout=60) == 2.0
        assert wait_until(lambda: process_gone(pid), timeout=10)
