"""The behaviour cases that look inside the executor (how much it serialized, its queue) or need numpy,
pandas and pyarrow, on every backend. The backend-agnostic behaviour suite is cloudburst.testing's
contract suite: it runs in tests/test_contract_*.py.

The cases share one executor per backend: none of them needs a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import cloudburst

from .conftest import BACKENDS, leftover_check


def square(x: int) -> int:
    return x * x


@pytest.fixture(scope="module", params=BACKENDS)
def executor(request: pytest.FixtureRequest) -> Iterator[cloudburst.Executor]:
    """One executor with two workers per backend, shared by this file's tests; it must leave nothing behind."""
    if request.param == "fargate":
        request.getfixturevalue("emulator")
    ex = cloudburst.Executor(2, backend=request.param)
    yield ex
    check = leftover_check(ex)
    ex.terminate()
    check()


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
    before = executor.bytes_uploaded  # the executor is shared: count this test's bytes
    futures = [executor.submit(lambda a, i: float(a[i]), array, i) for i in range(40)]
    assert [f.result(timeout=60) for f in futures] == [float(array[i]) for i in range(40)]
    assert executor.bytes_uploaded - before < 1.1 * array.nbytes


def test_large_captured_object_moves_once(executor: cloudburst.Executor) -> None:
    table = {i: str(i) * 10 for i in range(100_000)}  # a few MB of Python objects, captured

    def lookup(k: int) -> str:
        return table[k]

    before = executor.bytes_uploaded
    assert list(executor.map(lookup, range(0, 100_000, 1000))) == [table[k] for k in range(0, 100_000, 1000)]
    size = len(__import__("cloudpickle").dumps(table))
    assert executor.bytes_uploaded - before < 1.5 * size


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
