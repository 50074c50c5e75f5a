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

from . import tasks
from .fixtures import ContractFixtures

BAD = tasks.BAD


def died_with(code: int) -> Callable[[BaseException], None]:
    """A check that the worker died ``retries + 1`` times (the default, 2 retries) with exit ``code``."""

    def check(exc: BaseException) -> None:
        assert isinstance(exc, cloudburst.WorkerDiedError)
        # A process killed by signal N: -N from subprocess, 128+N from a container.
        assert exc.exit_code in (code, 128 - code if code < 0 else code), exc.exit_code
        assert exc.attempts == 3

    return check


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
    #: more to check on the error
    check: Callable[[BaseException], None] | None = None


# Items are numbered by submit on the shared executor: the bad one is "item N" for some N.
ROWS = [
    Row("unpicklable argument", tasks.identity, cloudburst.PicklingError, r"item \d+: cannot send _thread.lock",
        bad_arg=threading.Lock),
    Row("argument fails to unpickle on the worker", tasks.identity, cloudburst.UnpicklingError,
        r"arguments of items \d+ could not be unpickled on the worker.*only_on_the_client",
        bad_arg=tasks.WorkerHostile, isolated=True),
    Row("unpicklable result", tasks.lock_on_bad, cloudburst.PicklingError,
        r"result of item \d+ cannot be pickled: _thread.lock"),
    Row("result fails to unpickle in the client", tasks.client_hostile_on_bad, cloudburst.UnpicklingError,
        r"result of item \d+ came back but could not be unpickled here.*only_on_the_worker", isolated=True),
    Row("task calls sys.exit", tasks.exit_on_bad, cloudburst.TaskExitError, r"item \d+ called sys.exit\(4\)"),
    Row("task raises KeyboardInterrupt", tasks.interrupt_on_bad, KeyboardInterrupt, None),
    Row("worker killed by SIGKILL", tasks.sigkill_on_bad, cloudburst.WorkerDiedError,
        r"item \d+: the worker running it died 3 time\(s\).*killed by SIGKILL", isolated=True, check=died_with(-9)),
    Row("os._exit inside a task", tasks.os_exit_on_bad, cloudburst.WorkerDiedError, r"died 3 time\(s\).*exit code 3",
        isolated=True, check=died_with(3)),
    Row("segfault", tasks.segfault_on_bad, cloudburst.WorkerDiedError,
        r"killed by SIGSEGV(?s:.*)Last worker output:\nFatal Python error: Segmentation fault(?s:.*)segfault_on_bad",
        isolated=True, check=died_with(-11)),
]  # fmt: skip


class FailureContract(ContractFixtures):
    """Every failure the core handles, through the backend."""

    @pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
    def test_failure_row(self, row: Row, contract_executor: cloudburst.Executor) -> None:
        if row.isolated:
            self.needs_isolated_workers()
        args = [row.bad_arg() if i == BAD else i for i in range(6)]
        futures = [contract_executor.submit(row.fn, a) for a in args]
        with pytest.raises(row.error, match=row.match) as info:
            futures[BAD].result(timeout=120)
        if row.check:
            row.check(info.value)
        survivors = {i: f.result(timeout=120) for i, f in enumerate(futures) if i != BAD}
        assert survivors == {i: i for i in range(6) if i != BAD}
        assert contract_executor.submit(abs, -5).result(timeout=60) == 5  # still usable

    def test_worker_death_is_retried(self, contract_executor: cloudburst.Executor, tmp_path: Path) -> None:
        self.needs_isolated_workers()
        marker = str(tmp_path / "marker")
        futures = [contract_executor.submit(tasks.die_first_time, i, marker) for i in range(6)]
        assert [f.result(timeout=120) for f in futures] == [i * 10 for i in range(6)]
        assert Path(marker).exists()

    def test_map_errors_return_isolates_the_killer(self, backend: tuple[str, dict[str, Any]]) -> None:
        self.needs_isolated_workers()
        self.needs_fresh_executors()
        name, options = backend
        kwargs: dict[str, Any] = {"workers": 2, "backend": name, "progress": False, "retries": 1, **options}
        out = cloudburst.map(tasks.sigkill_on_bad, range(30), chunksize=10, errors="return", **kwargs)
        assert isinstance(out[BAD], cloudburst.WorkerDiedError)
        assert [v for i, v in enumerate(out) if i != BAD] == [i for i in range(30) if i != BAD]

    def test_unpicklable_function_is_refused_at_submit(self, contract_executor: cloudburst.Executor) -> None:
        lock = threading.Lock()
        with pytest.raises(cloudburst.PicklingError, match=r"cannot send the function .*<lambda>.*created inside"):
            contract_executor.submit(lambda: lock)
        assert contract_executor.submit(abs, -1).result(timeout=60) == 1

    def test_function_fails_to_unpickle_on_the_worker(self, contract_executor: cloudburst.Executor) -> None:
        self.needs_isolated_workers()
        hostile = tasks.WorkerHostile()

        def uses_hostile(x: int) -> int:
            return x if hostile else -x

        futures = [contract_executor.submit(uses_hostile, i) for i in range(3)]
        for future in futures:
            with pytest.raises(
                cloudburst.UnpicklingError, match=r"function could not be unpickled.*only_on_the_client"
            ):
                future.result(timeout=60)
        assert contract_executor.submit(abs, -2).result(timeout=60) == 2

    def test_retries_zero_fails_on_the_first_death(self, make_executor: Callable[..., cloudburst.Executor]) -> None:
        self.needs_isolated_workers()
        ex = make_executor(workers=1, retries=0)
        with pytest.raises(cloudburst.WorkerDiedError, match=r"died 1 time\(s\)") as info:
            ex.submit(tasks.sigkill_on_bad, BAD).result(timeout=120)
        assert info.value.attempts == 1

    def test_workers_that_cannot_start(self, make_executor: Callable[..., cloudburst.Executor]) -> None:
        self.needs_isolated_workers()
        ex = make_executor(workers=1, env={"PYTHONHOME": "/nonexistent"})
        with pytest.raises(cloudburst.WorkerDiedError, match=r"keep failing before they run anything") as info:
            ex.submit(abs, -1).result(timeout=120)
        assert info.value.exit_code not in (0, None)
