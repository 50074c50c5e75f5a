"""dask runs its graphs on a cloudburst executor: ``dask.compute(..., scheduler=cloudburst.Executor(...))``.

dask accepts any ``concurrent.futures.Executor`` as its scheduler and submits each ready task of the graph to it.
The results must equal those of dask's synchronous scheduler, for a dask array (chunked numpy) and for a
``dask.delayed`` graph, on local workers (one executor shared by the module) and on emulated Fargate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import cloudburst
from cloudburst.emulator import Emulator

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def local_executor() -> Iterator[cloudburst.Executor]:
    """One local executor for the module's tests: dask submits many small tasks to it."""
    with cloudburst.Executor(2, backend="local") as ex:
        yield ex


def array_graph() -> Any:
    """A chunked computation with a reduction across chunks and a matrix product."""
    x = da.arange(40_000, chunks=4_000).reshape(200, 200).rechunk((50, 50)).astype(float)
    y = (x @ x.T) / 1e6 + da.sin(x)
    return y.sum(axis=0), y.mean(), (x**2).std()


def slow_square(i: int) -> int:
    return i * i


def combine(values: list[int], offset: int) -> int:
    return sum(values) + offset


def delayed_graph() -> Any:
    """A fan-out and fan-in of delayed calls, with a shared intermediate."""
    delayed = dask.delayed
    squares = [delayed(slow_square)(i) for i in range(20)]
    offset = delayed(sum)(squares[:5])
    total = delayed(combine)(squares, offset)
    return total, delayed(max)(squares), offset


def assert_same(got: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, np.ndarray):
            np.testing.assert_allclose(g, e, rtol=1e-12)
        else:
            assert g == pytest.approx(e, rel=1e-12)


def test_dask_array_on_local_workers(local_executor: cloudburst.Executor) -> None:
    expected = dask.compute(*array_graph(), scheduler="sync")
    got = dask.compute(*array_graph(), scheduler=local_executor)
    assert_same(got, expected)


def test_dask_delayed_on_local_workers(local_executor: cloudburst.Executor) -> None:
    expected = dask.compute(*delayed_graph(), scheduler="sync")
    got = dask.compute(*delayed_graph(), scheduler=local_executor)
    assert got == expected
    assert got[0] == sum(i * i for i in range(20)) + sum(i * i for i in range(5))
    (worker_pid,) = dask.compute(dask.delayed(os.getpid)(), scheduler=local_executor)
    assert worker_pid != os.getpid(), "the graph ran in the client, not on cloudburst's workers"


def test_a_task_error_reaches_dask_with_its_type(local_executor: cloudburst.Executor) -> None:
    bad = dask.delayed(slow_square)("not a number")
    with pytest.raises(TypeError):
        dask.compute(bad, scheduler=local_executor)
    # The executor is still usable afterwards.
    assert dask.compute(dask.delayed(slow_square)(7), scheduler=local_executor) == (49,)


def test_dask_array_and_delayed_on_emulated_fargate(emulator: Emulator) -> None:
    expected = dask.compute(*array_graph(), *delayed_graph(), scheduler="sync")
    with cloudburst.Executor(2, backend="fargate") as ex:
        got = dask.compute(*array_graph(), *delayed_graph(), scheduler=ex)
    assert_same(got, expected)
