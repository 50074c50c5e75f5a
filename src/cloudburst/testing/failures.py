"""The failure table through ``cloudburst.Executor``: each failure's error, and that everything else survives.

Each row submits items 0..5, where item 2 is the bad one: its future fails with the row's error, every
other item returns its value, and the executor stays usable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cloudburst

from .fixtures import ContractFixtures
from .tasks import (
    BAD,
    WorkerHostile,
    client_hostile_on_bad,
    die_first_time,
    exit_on_bad,
    identity,
    interrupt_on_bad,
    lock_on_bad,
    os_exit_on_bad,
    sigkill_on_bad,
)


@dataclass(frozen=True)
class Row:
    """One failure: the function, the bad item's argument, and the error its future must raise."""

    name: str
    fn: Callable[[Any], Any]
    error: type[BaseException]
    match: str | None
    bad_arg: Callable[[], Any] = lambda: BAD
    #: needs workers in processes of their own (it kills one, or loads an object differently there)
    isolated: bool = False


ROWS = [
    Row("unpicklable argument", identity, cloudburst.PicklingError, r"item \d+: cannot send _thread.lock",
        bad_arg=threading.Lock),
    Row("argument fails to unpickle on the worker", identity, cloudburst.UnpicklingError,
        r"arguments of items \d+ could not be unpickled on the worker.*only_on_the_client",
        bad_arg=WorkerHostile, isolated=True),
    Row("unpicklable result", lock_on_bad, cloudburst.PicklingError, r"result of item \d+ cannot be pickled"),
    Row("result fails to unpickle in the client", client_hostile_on_bad, cloudburst.UnpicklingError,
        r"result of item \d+ came back but could not be unpickled here.*only_on_the_worker", isolated=True),
    Row("task calls sys.exit", exit_on_bad, cloudburst.TaskExitError, r"item \d+ called sys.exit\(4\)"),
    Row("task raises KeyboardInterrupt", interrupt_on_bad, KeyboardInterrupt, None),
    Row("worker killed by SIGKILL", sigkill_on_bad, cloudburst.WorkerDiedError,
        r"item \d+: the worker running it died 3 time\(s\)", isolated=True),
    Row("os._exit inside a task", os_exit_on_bad, cloudburst.WorkerDiedError, r"died 3 time\(s\).*exit code 3",
        isolated=True),
]  # fmt: skip


class FailureContract(ContractFixtures):
    """Every failure the core handles, through the backend."""

    @pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
    def test_failure_row(self, row: Row, contract_executor: cloudburst.Executor) -> None:
        if row.isolated:
            self.needs_isolated_workers()
        args = [row.bad_arg() if i == BAD else i for i in range(6)]
        futures = [contract_executor.submit(row.fn, a) for a in args]
        with pytest.raises(row.error, match=row.match):
            futures[BAD].result(timeout=120)
        survivors = {i: f.result(timeout=120) for i, f in enumerate(futures) if i != BAD}
        assert survivors == {i: i for i in range(6) if i != BAD}
        assert contract_executor.submit(abs, -5).result(timeout=60) == 5  # still usable

    def test_worker_death_is_retried(self, contract_executor: cloudburst.Executor, tmp_path: Path) -> None:
        self.needs_isolated_workers()
        marker = str(tmp_path / "marker")
        futures = [contract_executor.submit(die_first_time, i, marker) for i in range(6)]
        assert [f.result(timeout=120) for f in futures] == [i * 10 for i in range(6)]
        assert Path(marker).exists()

    def test_unpicklable_function_is_refused_at_submit(self, contract_executor: cloudburst.Executor) -> None:
        lock = threading.Lock()
        with pytest.raises(cloudburst.PicklingError, match=r"cannot send the function"):
            contract_executor.submit(lambda: lock)

    def test_retries_zero_fails_on_the_first_death(self, make_executor: Callable[..., cloudburst.Executor]) -> None:
        self.needs_isolated_workers()
        ex = make_executor(workers=1, retries=0)
        with pytest.raises(cloudburst.WorkerDiedError, match=r"died 1 time\(s\)") as info:
            ex.submit(sigkill_on_bad, BAD).result(timeout=120)
        assert info.value.attempts == 1

    def test_workers_that_cannot_start(self, make_executor: Callable[..., cloudburst.Executor]) -> None:
        self.needs_isolated_workers()
        ex = make_executor(workers=1, env={"PYTHONHOME": "/nonexistent"})
        with pytest.raises(cloudburst.WorkerDiedError, match=r"keep failing before they run anything"):
            ex.submit(abs, -1).result(timeout=120)
