"""The behaviour suite through ``cloudburst.Executor``: futures, map, what can be sent, output, seeds, errors.

Cases that can share the class's executor do (``contract_executor``); the others make their own
(``make_executor``). A task that must stay busy waits on a ``gate`` file the test opens, not on a timer: the
suite assumes, as the failure table's marker files do, that workers see the client's files.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import random
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cloudburst

from . import tasks
from .fixtures import ContractFixtures, wait_until

Make = Callable[..., cloudburst.Executor]


class FutureContract(ContractFixtures):
    """Futures as concurrent.futures defines them: results, waiting, callbacks, timeouts, cancelling."""

    def test_submit_returns_a_standard_future(self, contract_executor: cloudburst.Executor) -> None:
        assert isinstance(contract_executor, cf.Executor)
        future = contract_executor.submit(tasks.add, 2, 3, scale=10)
        assert isinstance(future, cf.Future)
        assert future.result(timeout=60) == 50

    def test_wait_as_completed_and_callbacks(self, contract_executor: cloudburst.Executor) -> None:
        futures = [contract_executor.submit(tasks.sleep_then, i, 0.01 * (i % 3)) for i in range(20)]
        seen: list[int] = []
        called = threading.Event()

        def callback(f: cf.Future[int]) -> None:
            seen.append(f.result())  # called with the finished future
            called.set()

        futures[7].add_done_callback(callback)
        done, not_done = cf.wait(futures, timeout=60)
        assert not not_done and len(done) == 20
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == list(range(20))
        assert called.wait(60) and seen == [7]

    def test_first_completed_and_result_timeout(self, contract_executor: cloudburst.Executor, gate: str) -> None:
        slow = contract_executor.submit(tasks.wait_for, "slow", gate)
        fast = contract_executor.submit(tasks.sleep_then, "fast", 0)
        done, _ = cf.wait([slow, fast], timeout=60, return_when=cf.FIRST_COMPLETED)
        assert fast in done and slow not in done
        with pytest.raises(cf.TimeoutError):
            slow.result(timeout=0.1)
        Path(gate).touch()
        assert slow.result(timeout=60) == "slow"

    def test_running_future_cannot_be_cancelled(self, contract_executor: cloudburst.Executor, gate: str) -> None:
        future = contract_executor.submit(tasks.wait_for, 1, gate)
        assert wait_until(lambda: future.running() or future.done(), timeout=60)
        assert not future.cancel()
        Path(gate).touch()
        assert future.result(timeout=60) == 1

    # These two block their worker with a sleep, not a gate: the live-AWS suite runs them, and a worker
    # there cannot see the client's files.
    def test_cancel_a_pending_future(self, make_executor: Make) -> None:
        ex = make_executor(workers=1)
        blocker = ex.submit(tasks.sleep_then, "blocker", 1.5)
        assert wait_until(lambda: blocker.running() or blocker.done(), timeout=60)
        queued = [ex.submit(tasks.square, i) for i in range(5)]
        assert all(f.cancel() for f in queued) and all(f.cancelled() for f in queued)
        with pytest.raises(cf.CancelledError):
            queued[0].result()
        assert blocker.result(timeout=60) == "blocker"
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9  # still usable

    def test_shutdown_cancels_and_refuses(self, make_executor: Make) -> None:
        ex = make_executor(workers=1)
        running = ex.submit(tasks.sleep_then, "running", 1)
        assert wait_until(lambda: running.running() or running.done(), timeout=60)
        queued = [ex.submit(tasks.square, i) for i in range(10)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert running.result() == "running"
        assert all(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(tasks.square, 1)
        with pytest.raises(cloudburst.ExecutorShutdownError):
            ex.map(tasks.square, [1])
        ex.shutdown()  # idempotent

    def test_context_manager_waits_for_work(self, make_executor: Make) -> None:
        with make_executor(workers=2) as ex:
            futures = [ex.submit(tasks.sleep_then, i, 0.05) for i in range(6)]
        assert all(f.done() for f in futures)
        assert [f.result() for f in futures] == list(range(6))

    def test_max_workers_alias(self, make_executor: Make) -> None:
        ex = make_executor(max_workers=1)
        assert ex.options.workers == 1
        assert ex.submit(tasks.square, 9).result(timeout=60) == 81


class MapContract(ContractFixtures):
    """Executor.map and cloudburst.map: order, several iterables, chunks, timeouts, error modes."""

    def test_map_keeps_input_order(self, contract_executor: cloudburst.Executor) -> None:
        items = list(range(300))
        random.Random(1).shuffle(items)
        assert list(contract_executor.map(tasks.square, items)) == [x * x for x in items]

    def test_map_several_iterables_empty_and_chunks(self, contract_executor: cloudburst.Executor) -> None:
        assert list(contract_executor.map(tasks.add, [1, 2, 3], [10, 20])) == [11, 22]  # stops at the shortest
        assert list(contract_executor.map(tasks.square, [])) == []
        for chunksize in (1, 7, 1000):  # one item a task, uneven chunks, one chunk larger than the input
            out = list(contract_executor.map(tasks.square, range(50), chunksize=chunksize))
            assert out == [x * x for x in range(50)], chunksize

    def test_map_timeout(self, contract_executor: cloudburst.Executor, gate: str) -> None:
        results = contract_executor.map(tasks.wait_for, [1, 2], [gate, gate], timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            next(results)

    def test_map_raises_at_the_failed_item(self, contract_executor: cloudburst.Executor) -> None:
        results = contract_executor.map(tasks.fail_on, range(10), [4] * 10)
        assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="bad item 4"):
            next(results)

    def test_module_map_and_its_error_modes(self, backend: tuple[str, dict[str, Any]]) -> None:
        self.needs_fresh_executors()
        name, options = backend
        kwargs: dict[str, Any] = {"workers": 2, "backend": name, "progress": False, **options}
        assert cloudburst.map(tasks.square, range(1000), **kwargs) == [x * x for x in range(1000)]
        returned = cloudburst.map(tasks.fail_on, range(6), [2] * 6, errors="return", **kwargs)
        assert returned[:2] == [0, 1] and returned[3:] == [3, 4, 5] and isinstance(returned[2], ValueError)
        assert cloudburst.map(tasks.fail_on, range(6), [2] * 6, errors="skip", **kwargs) == [0, 1, 3, 4, 5]
        with pytest.raises(ValueError, match="bad item 2") as info:
            cloudburst.map(tasks.fail_on, range(6), [2] * 6, errors="raise", **kwargs)
        if sys.version_info >= (3, 11):
            assert any("errors='return'" in note for note in info.value.__notes__)


class SendingContract(ContractFixtures):
    """What can be sent: lambdas, closures, classes, modules the worker cannot import, large objects."""

    def test_lambdas_closures_and_large_arguments(self, contract_executor: cloudburst.Executor) -> None:
        offset, blob = 1000, bytes(range(256)) * 12_000  # 3 MB: travels through the store
        assert list(contract_executor.map(lambda x: x + offset, range(5))) == [1000, 1001, 1002, 1003, 1004]
        assert contract_executor.submit(lambda b, i: b[i], blob, 1001).result(timeout=60) == blob[1001]
        assert len(contract_executor.submit(lambda n: b"x" * n, 3_000_000).result(timeout=60)) == 3_000_000

    def test_classes_and_methods(self, contract_executor: cloudburst.Executor) -> None:
        points = [tasks.Point(i, i + 1) for i in range(5)]
        assert list(contract_executor.map(tasks.Point.norm2, points)) == [p.norm2() for p in points]
        result = contract_executor.submit(tasks.Point, 3, 4).result(timeout=60)
        assert isinstance(result, tasks.Point) and result.norm2() == 25

    def test_class_defined_at_run_time(self, contract_executor: cloudburst.Executor) -> None:
        class Local:
            def __init__(self, v: int) -> None:
                self.v = v

        out = contract_executor.submit(lambda v: Local(v * 2), 21).result(timeout=60)
        assert type(out) is Local and out.v == 42

    def test_user_module_the_worker_cannot_import(
        self, contract_executor: cloudburst.Executor, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        module_dir = tmp_path / "private"
        module_dir.mkdir()
        name = f"private_helpers_{request.node.nodeid.__hash__() & 0xFFFFFF:x}"  # each class: a module of its own
        (module_dir / f"{name}.py").write_text("FACTOR = 7\n\ndef scale(x):\n    return x * FACTOR\n")
        sys.path.insert(0, str(module_dir))
        try:
            module = __import__(name)
        finally:
            sys.path.remove(str(module_dir))
        try:
            assert list(contract_executor.map(module.scale, [1, 2, 3])) == [7, 14, 21]
        finally:
            sys.modules.pop(name, None)


class OutputContract(ContractFixtures):
    """What a call prints, logs and warns comes back to the client, tagged with its item."""

    def test_output_logging_and_warnings_are_relayed(
        self, contract_executor: cloudburst.Executor, capsys: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        if not self.relays_output:
            pytest.skip("the backend's calls write to the client's terminal directly")
        caplog.set_level(logging.WARNING, logger="a_users_module")
        with pytest.warns(RuntimeWarning) as record:
            assert list(contract_executor.map(tasks.talk, [0, 1])) == [0, 1]
        # a map's items are labelled by their positions in it
        assert {str(w.message) for w in record} >= {"[item 0] careful with 0", "[item 1] careful with 1"}
        captured = capsys.readouterr()
        assert "[item 0] hello from 0" in captured.out and "[item 1] hello from 1" in captured.out
        assert "[item 1] to stderr 1" in captured.err
        messages = [r.getMessage() for r in caplog.records if r.name == "a_users_module"]
        assert "[item 0] log record 0" in messages and "[item 1] log record 1" in messages

    def test_every_task_relays_its_own_output(self, make_executor: Make, capsys: Any) -> None:
        if not self.relays_output:
            pytest.skip("the backend's calls write to the client's terminal directly")
        ex = make_executor(workers=1)  # one worker: every task runs in the same process
        with pytest.warns(UserWarning) as record:
            for i in range(3):
                assert ex.submit(tasks.warn_and_print, i).result(timeout=60) == i
        assert {str(w.message) for w in record} >= {f"[item {i}] the same line every time" for i in range(3)}
        out = capsys.readouterr().out
        assert all(f"[item {i}] item says {i}" in out for i in range(3))


class SeedContract(ContractFixtures):
    """``seed=``: each item's random streams depend on the seed and its index only."""

    def test_seeded_results_do_not_depend_on_workers_or_chunks(self, make_executor: Make) -> None:
        pytest.importorskip("numpy")
        one, two = make_executor(workers=1, seed=7), make_executor(workers=2, seed=7)
        # the second executor runs two maps: its workers have run other items when the second comes
        runs = [list(ex.map(tasks.draw, range(40), chunksize=c)) for ex, c in [(one, None), (two, 1), (two, 13)]]
        assert runs[0] == runs[1] == runs[2]
        assert len(set(runs[0])) == 40  # every item has its own stream
        assert list(make_executor(workers=2, seed=8).map(tasks.draw, range(40))) != runs[0]

    def test_rng_is_the_spawned_child_stream(self, make_executor: Make) -> None:
        np = pytest.importorskip("numpy")
        got = list(make_executor(workers=1, seed=123).map(tasks.rng_draws, range(3)))
        children = np.random.SeedSequence(123).spawn(3)
        assert got == [np.random.default_rng(c).random(3).tolist() for c in children]


class ErrorContract(ContractFixtures):
    """A call's exception comes back as itself, with the worker's traceback; the executor carries on."""

    def test_exception_keeps_type_and_traceback(self, contract_executor: cloudburst.Executor) -> None:
        with pytest.raises(ValueError, match="bad item 5") as info:
            contract_executor.submit(tasks.fail_on, 5, 5).result(timeout=60)
        text = "".join(traceback.format_exception(info.value))
        assert "fail_on" in text and 'raise ValueError(f"bad item {x}")' in text
        assert contract_executor.submit(tasks.square, 5).result(timeout=60) == 25  # still usable


class BehaviourContract(FutureContract, MapContract, SendingContract, OutputContract, SeedContract, ErrorContract):
    """What an Executor does, whatever runs its workers."""
