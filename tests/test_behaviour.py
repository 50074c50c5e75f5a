"""The behaviour suite: what an Executor does, written once, run against every backend."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import random
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cloudburst


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, *, scale: int = 1) -> int:
    return (x + y) * scale


def sleep_then(x: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def talk(x: int) -> int:
    print(f"hello from {x}")
    print(f"to stderr {x}", file=sys.stderr)
    logging.getLogger("a_users_module").warning("log record %d", x)
    warnings.warn(f"careful with {x}", RuntimeWarning, stacklevel=1)
    return x


def warn_and_print(x: int) -> int:
    warnings.warn("the same line every time", UserWarning, stacklevel=1)
    print(f"item says {x}")
    return x


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def norm2(self) -> int:
        return self.x * self.x + self.y * self.y


def draw(_: int) -> tuple[float, float, float]:
    return (cloudburst.rng().random(), random.random(), float(np.random.random()))


# ---------------------------------------------------------------------------- submit and futures


def test_submit_returns_standard_future(executor: cloudburst.Executor) -> None:
    future = executor.submit(add, 2, 3, scale=10)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 50


def test_is_a_concurrent_futures_executor(executor: cloudburst.Executor) -> None:
    assert isinstance(executor, cf.Executor)


def test_max_workers_alias(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    assert ex.options.workers == 1
    assert ex.submit(square, 9).result(timeout=30) == 81


def test_wait_and_as_completed(executor: cloudburst.Executor) -> None:
    futures = [executor.submit(sleep_then, i, 0.01 * (i % 3)) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == list(range(20))
    assert len(done) == 20


def test_first_completed(executor: cloudburst.Executor) -> None:
    slow = executor.submit(sleep_then, "slow", 3)
    fast = executor.submit(sleep_then, "fast", 0)
    done, _ = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow not in done


def test_callbacks_run_with_the_finished_future(executor: cloudburst.Executor) -> None:
    seen: list[int] = []
    event = threading.Event()

    def callback(f: cf.Future[int]) -> None:
        seen.append(f.result())
        event.set()

    executor.submit(square, 12).add_done_callback(callback)
    assert event.wait(30)
    assert seen == [144]


def test_result_timeout(executor: cloudburst.Executor) -> None:
    future = executor.submit(sleep_then, 1, 2)
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.1)
    assert future.result(timeout=30) == 1


def test_cancel_pending_future(make_executor: Any) -> None:
    ex = make_executor(1)
    blocker = ex.submit(sleep_then, "blocker", 1.5)
    assert cloudburst_wait_running(blocker)
    queued = [ex.submit(square, i) for i in range(5)]
    assert all(f.cancel() for f in queued)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(cf.CancelledError):
        queued[0].result()
    assert blocker.result(timeout=30) == "blocker"
    assert ex.submit(square, 3).result(timeout=30) == 9  # still usable


def cloudburst_wait_running(future: cf.Future[Any], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if future.running() or future.done():
            return True
        time.sleep(0.01)
    return False


def test_running_future_cannot_be_cancelled(make_executor: Any) -> None:
    ex = make_executor(1)
    future = ex.submit(sleep_then, 1, 0.5)
    assert cloudburst_wait_running(future)
    assert not future.cancel()
    assert future.result(timeout=30) == 1


def test_shutdown_cancel_futures(make_executor: Any) -> None:
    ex = make_executor(1)
    running = ex.submit(sleep_then, "running", 1)
    assert cloudburst_wait_running(running)
    queued = [ex.submit(square, i) for i in range(10)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result() == "running"
    assert all(f.cancelled() for f in queued)


def test_submit_after_shutdown_is_refused(executor: cloudburst.Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)
    with pytest.raises(cloudburst.ExecutorShutdownError):
        executor.map(square, [1])
    executor.shutdown()  # idempotent


def test_context_manager_waits_for_work(backend: str) -> None:
    with cloudburst.Executor(2, backend=backend) as ex:
        futures = [ex.submit(sleep_then, i, 0.05) for i in range(6)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(6))


# ---------------------------------------------------------------------------- map


def test_map_keeps_input_order(executor: cloudburst.Executor) -> None:
    items = list(range(300))
    random.Random(1).shuffle(items)
    assert list(executor.map(square, items)) == [x * x for x in items]


def test_map_several_iterables_stops_at_shortest(executor: cloudburst.Executor) -> None:
    assert list(executor.map(add, [1, 2, 3], [10, 20])) == [11, 22]


def test_map_empty(executor: cloudburst.Executor) -> None:
    assert list(executor.map(square, [])) == []


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_explicit_chunksize(executor: cloudburst.Executor, chunksize: int) -> None:
    assert list(executor.map(square, range(50), chunksize=chunksize)) == [x * x for x in range(50)]


def test_map_timeout(executor: cloudburst.Executor) -> None:
    results = executor.map(sleep_then, [1, 2], [3, 3], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_map_raises_at_the_failed_item(executor: cloudburst.Executor) -> None:
    results = executor.map(fail_on, range(10), [4] * 10)
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="bad item 4"):
        next(results)


def test_module_map_returns_list(backend: str) -> None:
    out = cloudburst.map(square, range(1000), workers=2, backend=backend, progress=False)
    assert out == [x * x for x in range(1000)]


def test_module_map_error_modes(backend: str) -> None:
    kwargs: dict[str, Any] = {"workers": 2, "backend": backend, "progress": False}
    returned = cloudburst.map(fail_on, range(6), [2] * 6, errors="return", **kwargs)
    assert returned[:2] == [0, 1] and returned[3:] == [3, 4, 5]
    assert isinstance(returned[2], ValueError)
    assert cloudburst.map(fail_on, range(6), [2] * 6, errors="skip", **kwargs) == [0, 1, 3, 4, 5]
    with pytest.raises(ValueError, match="bad item 2") as info:
        cloudburst.map(fail_on, range(6), [2] * 6, errors="raise", **kwargs)
    if sys.version_info >= (3, 11):
        assert any("errors='return'" in note for note in info.value.__notes__)


# ---------------------------------------------------------------------------- what can be sent


def test_lambdas_and_closures(executor: cloudburst.Executor) -> None:
    offset = 1000
    assert list(executor.map(lambda x: x + offset, range(5))) == [1000, 1001, 1002, 1003, 1004]


def test_classes_and_methods(executor: cloudburst.Executor) -> None:
    points = [Point(i, i + 1) for i in range(5)]
    assert list(executor.map(Point.norm2, points)) == [p.norm2() for p in points]
    result = executor.submit(Point, 3, 4).result(timeout=30)
    assert isinstance(result, Point) and result.norm2() == 25


def test_class_defined_at_run_time(executor: cloudburst.Executor) -> None:
    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

    out = executor.submit(lambda v: Local(v * 2), 21).result(timeout=30)
    assert type(out) is Local and out.v == 42


def test_user_module_the_worker_cannot_import(tmp_path: Path, make_executor: Any) -> None:
    module_dir = tmp_path / "private"
    module_dir.mkdir()
    (module_dir / "private_helpers_cb.py").write_text("FACTOR = 7\n\ndef scale(x):\n    return x * FACTOR\n")
    sys.path.insert(0, str(module_dir))
    try:
        import private_helpers_cb  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(module_dir))
    try:
        ex = make_executor(1)
        assert list(ex.map(private_helpers_cb.scale, [1, 2, 3])) == [7, 14, 21]
    finally:
        sys.modules.pop("private_helpers_cb", None)


def test_numpy_pandas_arrow_round_trip(executor: cloudburst.Executor) -> None:
    import pandas as pd
    import pyarrow as pa

    array = np.arange(300_000, dtype=np.float64)  # 2.4 MB: travels out of band
    frame = pd.DataFrame({"a": np.arange(1000), "b": [f"s{i}" for i in range(1000)]})
    table = pa.table({"x": list(range(1000))})
    assert executor.submit(lambda a: a * 2, array).result(timeout=30).sum() == array.sum() * 2
    assert executor.submit(lambda f: f.assign(c=f.a * 2), frame).result(timeout=30)["c"].sum() == frame.a.sum() * 2
    assert executor.submit(lambda t: t.num_rows, table).result(timeout=30) == 1000


def test_large_argument_moves_once(executor: cloudburst.Executor) -> None:
    array = np.random.default_rng(0).random(2_000_000)  # 16 MB
    futures = [executor.submit(lambda a, i: float(a[i]), array, i) for i in range(40)]
    assert [f.result(timeout=60) for f in futures] == [float(array[i]) for i in range(40)]
    assert executor._job.packer.bytes_serialized < 1.1 * array.nbytes


def test_large_captured_object_moves_once(executor: cloudburst.Executor) -> None:
    table = {i: str(i) * 10 for i in range(100_000)}  # a few MB of Python objects, captured

    def lookup(k: int) -> str:
        return table[k]

    assert list(executor.map(lookup, range(0, 100_000, 1000))) == [table[k] for k in range(0, 100_000, 1000)]
    size = len(__import__("cloudpickle").dumps(table))
    assert executor._job.packer.bytes_serialized < 1.5 * size


def test_large_argument_is_writable_and_private(executor: cloudburst.Executor) -> None:
    array = np.zeros(500_000)

    def bump(a: np.ndarray, i: int) -> float:
        a[:] += 1  # must not leak into the next task that gets the same array
        return float(a.sum())

    results = [executor.submit(bump, array, i).result(timeout=30) for i in range(4)]
    assert results == [float(array.size)] * 4
    assert array.sum() == 0


def test_large_results(executor: cloudburst.Executor) -> None:
    out = list(executor.map(lambda n: np.full(n, n, dtype=np.int32), [1_000_000, 10, 500_000]))
    assert [a.size for a in out] == [1_000_000, 10, 500_000]
    assert int(out[0][-1]) == 1_000_000


# ---------------------------------------------------------------------------- output relay


def test_output_logging_and_warnings_are_relayed(
    executor: cloudburst.Executor, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="a_users_module")
    with pytest.warns(RuntimeWarning, match=r"\[item 1\] careful with 1"):
        assert list(executor.map(talk, [0, 1])) == [0, 1]
    captured = capsys.readouterr()
    assert "[item 0] hello from 0" in captured.out
    assert "[item 1] hello from 1" in captured.out
    assert "[item 1] to stderr 1" in captured.err
    messages = [r.getMessage() for r in caplog.records if r.name == "a_users_module"]
    assert "[item 0] log record 0" in messages and "[item 1] log record 1" in messages


def test_every_task_relays_its_own_output(make_executor: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ex = make_executor(1)  # one worker: every task runs in the same process
    with pytest.warns(UserWarning) as record:
        for i in range(3):
            assert ex.submit(warn_and_print, i).result(timeout=60) == i
    assert {str(w.message) for w in record} >= {f"[item {i}] the same line every time" for i in range(3)}
    out = capsys.readouterr().out
    assert all(f"[item {i}] item says {i}" in out for i in range(3))


# ---------------------------------------------------------------------------- seeds


def test_seeded_results_do_not_depend_on_workers_or_chunks(backend: str) -> None:
    runs = [
        cloudburst.map(draw, range(40), workers=w, seed=7, chunksize=c, backend=backend, progress=False)
        for w, c in [(1, None), (2, 1), (2, 13)]
    ]
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0])) == 40  # every item has its own stream
    other = cloudburst.map(draw, range(40), workers=2, seed=8, backend=backend, progress=False)
    assert other != runs[0]


def test_rng_is_the_spawned_child_stream(executor: cloudburst.Executor) -> None:
    ex = cloudburst.Executor(1, seed=123)
    try:
        got = list(ex.map(lambda _: cloudburst.rng().random(3).tolist(), range(3)))
    finally:
        ex.shutdown()
    children = np.random.SeedSequence(123).spawn(3)
    assert got == [np.random.default_rng(c).random(3).tolist() for c in children]


# ---------------------------------------------------------------------------- errors


def test_user_exception_keeps_type_and_remote_traceback(executor: cloudburst.Executor) -> None:
    future = executor.submit(fail_on, 5, 5)
    with pytest.raises(ValueError, match="bad item 5") as info:
        future.result(timeout=30)
    text = "".join(traceback.format_exception(info.value))
    assert "fail_on" in text and 'raise ValueError(f"bad item {x}")' in text


def test_executor_survives_task_errors(executor: cloudburst.Executor) -> None:
    with pytest.raises(ValueError):
        executor.submit(fail_on, 1, 1).result(timeout=30)
    assert executor.submit(square, 5).result(timeout=30) == 25


def test_a_refused_send_fails_the_items_instead_of_hanging(executor: cloudburst.Executor) -> None:
    assert executor.submit(square, 2).result(timeout=60) == 4
    tasks = executor._job.resources.tasks
    send_batch = tasks.send_batch

    def refuse(bodies: Any) -> None:
        raise RuntimeError("the queue is gone")

    tasks.send_batch = refuse  # type: ignore[method-assign]
    try:
        future = executor.submit(square, 3)
        with pytest.raises(RuntimeError, match="the queue is gone"):
            future.result(timeout=60)
    finally:
        tasks.send_batch = send_batch  # type: ignore[method-assign]
    assert executor.submit(square, 5).result(timeout=60) == 25
