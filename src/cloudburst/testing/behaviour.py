"""The behaviour suite through ``cloudburst.Executor``: futures, map, what can be sent, output, errors."""

from __future__ import annotations

import concurrent.futures as cf
import random
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import cloudburst

from .fixtures import ContractFixtures, wait_until
from .tasks import add, fail_on, sleep_then, square, talk

Make = Callable[..., cloudburst.Executor]


class BehaviourContract(ContractFixtures):
    """What an Executor does, whatever runs its workers."""

    def test_submit_returns_a_standard_future(self, contract_executor: cloudburst.Executor) -> None:
        future = contract_executor.submit(add, 2, 3, scale=10)
        assert isinstance(future, cf.Future)
        assert future.result(timeout=60) == 50

    def test_wait_as_completed_and_callbacks(self, contract_executor: cloudburst.Executor) -> None:
        futures = [contract_executor.submit(sleep_then, i, 0.01 * (i % 3)) for i in range(12)]
        called = threading.Event()
        futures[0].add_done_callback(lambda f: called.set())
        done, not_done = cf.wait(futures, timeout=60)
        assert not not_done and len(done) == 12
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == list(range(12))
        assert called.wait(60)

    def test_map_keeps_input_order(self, contract_executor: cloudburst.Executor) -> None:
        items = list(range(300))
        random.Random(1).shuffle(items)
        assert list(contract_executor.map(square, items)) == [x * x for x in items]

    def test_map_several_iterables_and_empty(self, contract_executor: cloudburst.Executor) -> None:
        assert list(contract_executor.map(add, [1, 2, 3], [10, 20])) == [11, 22]
        assert list(contract_executor.map(square, [])) == []
        assert list(contract_executor.map(square, range(20), chunksize=7)) == [x * x for x in range(20)]

    def test_map_raises_at_the_failed_item(self, contract_executor: cloudburst.Executor) -> None:
        results = contract_executor.map(fail_on, range(10), [4] * 10)
        assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="bad item 4"):
            next(results)

    def test_lambdas_closures_and_large_arguments(self, contract_executor: cloudburst.Executor) -> None:
        offset, blob = 1000, bytes(range(256)) * 12_000  # 3 MB: travels through the store
        assert list(contract_executor.map(lambda x: x + offset, range(3))) == [1000, 1001, 1002]
        assert contract_executor.submit(lambda b, i: b[i], blob, 1001).result(timeout=60) == blob[1001]
        assert len(contract_executor.submit(lambda n: b"x" * n, 3_000_000).result(timeout=60)) == 3_000_000

    def test_exception_keeps_type_and_traceback(self, contract_executor: cloudburst.Executor) -> None:
        with pytest.raises(ValueError, match="bad item 5") as info:
            contract_executor.submit(fail_on, 5, 5).result(timeout=60)
        text = "".join(traceback.format_exception(info.value))
        assert "fail_on" in text and 'raise ValueError(f"bad item {x}")' in text
        assert contract_executor.submit(square, 5).result(timeout=60) == 25  # still usable

    def test_output_is_relayed(self, contract_executor: cloudburst.Executor, capsys: Any) -> None:
        if not self.relays_output:
            pytest.skip("the backend's calls write to the client's terminal directly")
        assert list(contract_executor.map(talk, [0, 1])) == [0, 1]
        captured = capsys.readouterr()
        assert "[item 1] hello from 1" in captured.out and "[item 0] to stderr 0" in captured.err

    def test_cancel_a_pending_future(self, make_executor: Make) -> None:
        ex = make_executor(workers=1)
        blocker = ex.submit(sleep_then, "blocker", 1.5)
        assert wait_until(lambda: blocker.running() or blocker.done(), timeout=60)
        queued = [ex.submit(square, i) for i in range(5)]
        assert all(f.cancel() for f in queued)
        with pytest.raises(cf.CancelledError):
            queued[0].result()
        assert blocker.result(timeout=60) == "blocker"
        assert ex.submit(square, 3).result(timeout=60) == 9

    def test_shutdown_cancels_and_refuses(self, make_executor: Make) -> None:
        ex = make_executor(workers=1)
        running = ex.submit(sleep_then, "running", 1)
        assert wait_until(lambda: running.running() or running.done(), timeout=60)
        queued = [ex.submit(square, i) for i in range(10)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert running.result() == "running"
        assert all(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(square, 1)
        ex.shutdown()  # idempotent

    def test_module_map_error_modes(self, backend: tuple[str, dict[str, Any]]) -> None:
        if not self.fresh_executors:
            pytest.skip("this backend runs the executor cases on its shared executor only")
        name, options = backend
        kwargs: dict[str, Any] = {"backend": name, "progress": False, **options}
        returned = cloudburst.map(fail_on, range(6), [2] * 6, errors="return", **kwargs)
        assert returned[:2] == [0, 1] and returned[3:] == [3, 4, 5] and isinstance(returned[2], ValueError)
        assert cloudburst.map(square, range(200), **kwargs) == [x * x for x in range(200)]
