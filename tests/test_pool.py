"""cloudburst.Pool against the behaviours CPython's Lib/test/_test_multiprocessing.py checks of its Pool."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from cloudburst.pool import Pool

from .conftest import process_gone, wait_until


def sqr(x: int, wait: float = 0.0) -> int:
    time.sleep(wait)
    return x * x


def mul(x: int, y: int) -> int:
    return x * y


def raising() -> None:
    raise KeyError("key")


def raise_large_valuerror(wait: float) -> None:
    time.sleep(wait)
    raise ValueError("x" * 1024)


_state: list[int] = []


def remember(value: int) -> None:
    _state.append(value)


def initialized_state(_: object) -> tuple[int, list[int]]:
    return os.getpid(), list(_state)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool(2) as p:
        yield p


def test_apply(pool: Pool) -> None:
    assert pool.apply(sqr, (5,)) == sqr(5)
    assert pool.apply(sqr, (), {"x": 3}) == sqr(3)


def test_map(pool: Pool) -> None:
    assert pool.map(sqr, list(range(10))) == [x * x for x in range(10)]
    assert pool.map(sqr, list(range(100)), chunksize=20) == [x * x for x in range(100)]
    assert pool.map(sqr, []) == []


def test_starmap(pool: Pool) -> None:
    tuples = list(zip(range(10), range(9, -1, -1), strict=True))
    assert pool.starmap(mul, tuples) == [mul(*t) for t in tuples]
    assert pool.starmap_async(mul, tuples, chunksize=3).get() == [mul(*t) for t in tuples]


def test_map_async_and_its_callback(pool: Pool) -> None:
    got: list[list[int]] = []
    result = pool.map_async(sqr, range(10), callback=got.append)
    assert result.get(timeout=30) == [x * x for x in range(10)]
    assert got == [[x * x for x in range(10)]], "the callback ran before get() returned"
    assert result.ready() and result.successful()


def test_async_result_timeout(pool: Pool) -> None:
    res = pool.apply_async(sqr, (6, 2.0))
    with pytest.raises(multiprocessing.TimeoutError):
        res.get(timeout=0.1)
    assert not res.ready()
    with pytest.raises(ValueError, match="not ready"):
        res.successful()
    assert res.get(timeout=30) == 36


def test_apply_async_reraises_and_calls_error_callback(pool: Pool) -> None:
    errors: list[BaseException] = []
    res = pool.apply_async(raising, error_callback=errors.append)
    with pytest.raises(KeyError):
        res.get(timeout=30)
    assert res.ready() and not res.successful()
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    errors.clear()
    res2 = pool.map_async(raise_large_valuerror, [0.0], error_callback=errors.append)
    with pytest.raises(ValueError):
        res2.get(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_map_raises_the_items_exception(pool: Pool) -> None:
    with pytest.raises(ValueError):
        pool.map(raise_large_valuerror, [0.0, 0.0])


def test_imap(pool: Pool) -> None:
    it = pool.imap(sqr, list(range(10)))
    assert list(it) == [x * x for x in range(10)]
    it = pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)
    assert list(pool.imap(sqr, range(1000), chunksize=100)) == [x * x for x in range(1000)]


def test_imap_unordered(pool: Pool) -> None:
    assert sorted(pool.imap_unordered(sqr, range(100))) == [x * x for x in range(100)]
    assert sorted(pool.imap_unordered(sqr, range(1000), chunksize=53)) == [x * x for x in range(1000)]


def test_empty_iterables(pool: Pool) -> None:
    assert list(pool.imap(sqr, [])) == []
    assert list(pool.imap_unordered(sqr, [])) == []
    assert pool.map_async(sqr, []).get(timeout=30) == []


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=1)  # type: ignore[arg-type]


def test_a_closed_pool_refuses_work_and_join_before_close_is_an_error() -> None:
    p = Pool(1)
    with pytest.raises(ValueError, match="still running"):
        p.join()
    res = p.apply_async(sqr, (7, 0.3))
    p.close()
    for call in (
        lambda: p.apply(sqr, (1,)),
        lambda: p.map(sqr, [1]),
        lambda: p.imap(sqr, [1]),
        lambda: p.apply_async(sqr, (1,)),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    p.join()
    assert res.ready() and res.get() == 49, "close() then join() let the work already given finish"
    with pytest.raises(ValueError, match="Pool not running"):
        p.__enter__()


def test_terminate_stops_the_workers_quickly() -> None:
    p = Pool(2)
    pids = {pid for pid, _ in p.map(initialized_state, range(4), chunksize=1)}
    slow = p.map_async(time.sleep, [5.0] * 20, chunksize=1)
    start = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - start < 20, "terminate waited for the outstanding work"
    assert wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=20), f"workers left: {pids}"
    with pytest.raises(BaseException):  # noqa: B017 - cancelled work: CancelledError or the pool's error
        slow.get(timeout=30)


def test_context_manager_terminates_on_exit() -> None:
    with Pool(2) as p:
        assert p.map(sqr, range(3)) == [0, 1, 4]
        pids = {pid for pid, _ in p.map(initialized_state, range(4), chunksize=1)}
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(sqr, [1])
    assert wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=20), f"workers left: {pids}"


def test_initializer_runs_once_in_each_worker_process() -> None:
    with Pool(2, initializer=remember, initargs=(42,)) as p:
        seen = p.map(initialized_state, range(40), chunksize=1)
        seen += [p.apply(initialized_state, (0,)) for _ in range(3)]
        seen += list(p.imap_unordered(initialized_state, range(10)))
    assert {tuple(state) for _, state in seen} == {(42,)}, "each process ran the initializer once, before its work"
    assert _state == [], "the initializer did not run in the caller"


def test_callbacks_run_on_another_thread_and_before_ready(pool: Pool) -> None:
    threads: list[threading.Thread] = []
    ready_in_callback: list[bool] = []
    holder: dict[str, object] = {}

    def callback(value: int) -> None:
        threads.append(threading.current_thread())
        ready_in_callback.append(bool(holder) and holder["res"].ready())  # type: ignore[attr-defined]

    res = pool.apply_async(sqr, (3, 0.3), callback=callback)
    holder["res"] = res
    assert res.get(timeout=30) == 9
    assert threads and threads[0] is not threading.current_thread()
    assert ready_in_callback == [False]


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total: int, when: int) -> Iterator[int]:
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_handles_an_exception_from_the_input_iterable(pool: Pool, method: str) -> None:
    imap = getattr(pool, method)
    it = imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    it = imap(sqr, exception_throwing_generator(10, 3), 1)
    taken = [next(it) for _ in range(3)]  # the items before the failure are not lost
    with pytest.raises(SayWhenError):
        next(it)
    assert sorted(taken) == [0, 1, 4]
    assert pool.map(sqr, range(3)) == [0, 1, 4], "the pool still works"


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle")


def test_map_of_unpicklable_items_raises_and_the_pool_goes_on(pool: Pool) -> None:
    with pytest.raises(Exception, match="cannot pickle") as info:
        pool.map(sqr, [Unpicklable()] * 10)
    assert isinstance(info.value, RuntimeError) or isinstance(info.value.__cause__, RuntimeError), info.value
    assert pool.map(sqr, range(3)) == [0, 1, 4]


class Counted:
    pass


def identity(x: Any) -> Any:
    return x


def test_the_pool_keeps_no_reference_to_a_finished_maps_items(pool: Pool) -> None:
    objs = [Counted() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    assert len(pool.map(identity, objs)) == 10
    del objs
    gc.collect()
    assert wait_until(lambda: (gc.collect(), {ref() for ref in refs})[1] == {None}, timeout=5)


def test_map_with_a_chunksize_and_starmap_async(pool: Pool) -> None:
    assert pool.map(sqr, range(100), chunksize=7) == [i * i for i in range(100)]
    assert pool.starmap_async(mul, [(i, i + 1) for i in range(20)], 3).get(timeout=30) == [
        i * (i + 1) for i in range(20)
    ]


def test_map_async_error_callback_gets_the_items_exception(pool: Pool) -> None:
    errors: list[BaseException] = []
    result = pool.map_async(int, ["1", "x", "3"], error_callback=errors.append)
    with pytest.raises(ValueError):
        result.get(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
