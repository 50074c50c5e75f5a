"""Properties, checked with hypothesis on generated inputs.

* Serialization round trips: whatever goes through a Packer and comes out of an
  Unpacker (with a store, inline or as blobs, compressed or not, shared across
  tasks or not) is the same object: same types, same values, same bits.
* Seed invariance: with ``seed=S`` an item's random draws depend on ``(S, item)``
  alone, not on the number of workers or the chunk size.
"""

from __future__ import annotations

import math
import pickle
import random
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd

import cloudburst
from cloudburst.backends.local import LocalStore
from cloudburst.protocol.serialize import BUFFER_MIN_BYTES, Packed, Packer, Unpacker
from cloudburst.seeds import python_seed

SERIALIZATION = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def store_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cloudburst-properties-") as root:
        yield Path(root)


_ways = st.sampled_from([(4096, True), (4096, False), (1 << 20, True), (1 << 20, False)])


def _pair(root: Path, way: tuple[int, bool]) -> tuple[Packer, Unpacker]:
    """A Packer and an Unpacker on one store; ``way`` is (inline limit, compress)."""
    store = LocalStore(root / "store")
    cache = Path(tempfile.mkdtemp(dir=root))
    return Packer(store, inline_limit=way[0], compress=way[1]), Unpacker(store, cache)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down, floats compared by their bits (-0.0, nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex):
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            _same(ka, kb) and _same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


_hashable = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
_scalars = _hashable | st.floats() | st.complex_numbers() | st.just(math.inf)
nested = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.tuples(inner, inner)
        | st.dictionaries(_hashable, inner, max_size=6)
        | st.sets(_hashable, max_size=6)
        | st.frozensets(_hashable, max_size=6)
    ),
    max_leaves=40,
)


def _round_trip(packer: Packer, unpacker: Unpacker, obj: object) -> object:
    packed = packer.pack(obj)
    assert isinstance(packed, Packed)
    return unpacker.unpack(packed)


@SERIALIZATION
@given(obj=nested, way=_ways)
def test_nested_data_round_trips(store_dir: Path, obj: object, way: tuple[int, bool]) -> None:
    packer, unpacker = _pair(store_dir, way)
    assert _same(_round_trip(packer, unpacker, obj), obj)


@SERIALIZATION
@given(obj=nested, way=_ways, seed=st.integers(0, 2**32 - 1), tasks=st.integers(2, 4))
def test_shared_arguments_round_trip(
    store_dir: Path, obj: object, way: tuple[int, bool], seed: int, tasks: int
) -> None:
    """A large argument repeated across tasks (a list: shared by content; an array: by weak reference)."""
    packer, unpacker = _pair(store_dir, way)
    rng = random.Random(seed)
    table = [obj, *(rng.randbytes(16) for _ in range(5000))]  # incompressible: > SHARE_MIN_BYTES even zipped
    array = np.random.default_rng(seed).random(10_000)
    for task in range(tasks):
        calls: list[tuple[tuple[object, ...], dict[str, object] | None]] = [
            ((table, array, task, i), None) for i in range(3)
        ]
        shared = packer.shared_arguments(calls)
        if task:  # seen in an earlier task: both travel as shared blobs
            assert id(table) in shared and id(array) in shared
        back = unpacker.unpack(packer.pack([c for c, _ in calls], shared=shared))
        assert isinstance(back, list) and len(back) == 3
        for (got_table, got_array, got_task, i), (want, _) in zip(back, calls, strict=True):
            assert _same(got_table, table) and (got_task, i) == want[2:]
            assert got_array.dtype == array.dtype and got_array.tobytes() == array.tobytes()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=5, unique=True), way=_ways, calls=st.integers(1, 3))
def test_a_changed_argument_travels_as_it_is_now(
    store_dir: Path, values: list[float], way: tuple[int, bool], calls: int
) -> None:
    """An array (out of band, and shared once seen twice) changed between two tasks arrives changed."""
    packer, unpacker = _pair(store_dir, way)
    array = np.zeros(2 * BUFFER_MIN_BYTES // 8)
    for value in values:
        array[:] = value
        task = Task()  # in flight until it is dropped at the end of this round
        pairs: list[tuple[tuple[object, ...], dict[str, object] | None]] = [((array, i), None) for i in range(calls)]
        back = unpacker.unpack(packer.pack([c for c, _ in pairs], shared=packer.shared_arguments(pairs, task)))
        assert isinstance(back, list) and all(np.array_equal(got[0], array) for got in back)
        alone = unpacker.unpack(packer.pack(array))
        assert isinstance(alone, np.ndarray) and np.array_equal(alone, array)
        del task


class Task:
    """Stands for a task in flight."""


def _assert_same_array(got: object, sent: np.ndarray) -> None:
    """Bit for bit what pickle itself gives back (numpy's pickle makes byte order native, for one)."""
    want = pickle.loads(pickle.dumps(sent, protocol=5))
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


_dtypes = (
    hnp.scalar_dtypes()
    | hnp.byte_string_dtypes()
    | hnp.unicode_string_dtypes()
    | hnp.nested_dtypes(max_itemsize=64)
    | hnp.datetime64_dtypes()
    | hnp.timedelta64_dtypes()
)
_arrays = hnp.arrays(dtype=_dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))


@SERIALIZATION
@given(array=_arrays, way=_ways, layout=st.sampled_from(["as is", "fortran", "reversed", "transposed"]))
def test_numpy_arrays_round_trip(store_dir: Path, array: np.ndarray, way: tuple[int, bool], layout: str) -> None:
    """Any dtype and shape, in any memory layout."""
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "reversed" and array.ndim:
        array = array[::-1]
    elif layout == "transposed":
        array = array.T
    packer, unpacker = _pair(store_dir, way)
    _assert_same_array(_round_trip(packer, unpacker, array), array)


# numpy pickles arrays of datetime64 and timedelta64 in band; these kinds go out of band
_out_of_band = (
    hnp.boolean_dtypes()
    | hnp.integer_dtypes()
    | hnp.unsigned_integer_dtypes()
    | hnp.floating_dtypes()
    | hnp.complex_number_dtypes()
    | hnp.byte_string_dtypes()
    | hnp.unicode_string_dtypes()
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=_out_of_band | hnp.nested_dtypes(subtype_strategy=_out_of_band, max_itemsize=32),
    nbytes=st.integers(BUFFER_MIN_BYTES, 3 * BUFFER_MIN_BYTES),
    seed=st.integers(0, 2**32 - 1),
    way=_ways,
)
def test_large_arrays_round_trip_out_of_band(
    store_dir: Path, dtype: np.dtype[Any], nbytes: int, seed: int, way: tuple[int, bool]
) -> None:
    """Arrays of at least BUFFER_MIN_BYTES travel as out-of-band buffer blobs, and come back bit for bit."""
    raw = np.random.default_rng(seed).bytes(-(-nbytes // dtype.itemsize) * dtype.itemsize)  # whole items
    array = np.frombuffer(raw, dtype=dtype).copy()
    packer, unpacker = _pair(store_dir, way)
    packed = packer.pack(array)
    assert packed.buffers, "a large array should travel out of band"
    got = unpacker.unpack(packed)
    _assert_same_array(got, array)
    assert isinstance(got, np.ndarray) and got.flags.writeable  # the worker's copy-on-write view


_COLUMNS: dict[str, Any] = {
    "int": hpd.column("int", dtype=np.int64),
    "float": hpd.column("float", dtype=np.float64),
    "bool": hpd.column("bool", dtype=bool),
    "text": hpd.column("text", elements=st.text(max_size=8), dtype=object),
    "when": hpd.column("when", dtype="datetime64[ns]"),
    "uint8": hpd.column("uint8", dtype=np.uint8),
}
_frames = st.lists(st.sampled_from(sorted(_COLUMNS)), min_size=1, unique=True).flatmap(
    lambda names: hpd.data_frames(columns=[_COLUMNS[n] for n in names], index=hpd.range_indexes(max_size=20))
)


@SERIALIZATION
@given(frame=_frames, way=_ways)
def test_pandas_frames_round_trip(store_dir: Path, frame: pd.DataFrame, way: tuple[int, bool]) -> None:
    packer, unpacker = _pair(store_dir, way)
    got = _round_trip(packer, unpacker, frame)
    assert isinstance(got, pd.DataFrame)
    pd.testing.assert_frame_equal(got, frame, check_exact=True)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(150_000, 300_000), seed=st.integers(0, 2**32 - 1), way=_ways)
def test_large_pandas_frames_round_trip(store_dir: Path, rows: int, seed: int, way: tuple[int, bool]) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"x": rng.random(rows), "n": rng.integers(-(2**62), 2**62, rows), "flag": rng.random(rows) < 0.5}
    )
    packer, unpacker = _pair(store_dir, way)
    got = _round_trip(packer, unpacker, frame)
    assert isinstance(got, pd.DataFrame)
    pd.testing.assert_frame_equal(got, frame, check_exact=True)


# ---------------------------------------------------------------------------- seed invariance

SEED = 20240611
WORKER_COUNTS = (1, 2, 3)


def draws(x: int) -> tuple[Any, ...]:
    """What an item sees: its index, and a draw from each random source cloudburst seeds per item."""
    import random as item_random

    import numpy as item_np

    from cloudburst.seeds import current_item

    return (x, current_item(), cloudburst.rng().random(), item_random.random(), float(item_np.random.random()))


@pytest.fixture(scope="module")
def seeded_executors() -> Iterator[list[cloudburst.Executor]]:
    """One seeded executor per worker count, for every example: each example runs the same calls on all of them,
    so their item indices stay in step."""
    executors = [cloudburst.Executor(n, seed=SEED) for n in WORKER_COUNTS]
    try:
        yield executors
    finally:
        for ex in executors:
            ex.shutdown(wait=True, cancel_futures=True)


def _expected(index: int) -> tuple[float, float, float]:
    """The documented streams of item ``index`` under SEED."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(SEED, spawn_key=(index,))))
    python = random.Random(python_seed(SEED, index)).random()
    legacy = np.random.RandomState(np.random.SeedSequence(SEED, spawn_key=(index, 1)).generate_state(4))
    return rng.random(), python, float(legacy.random_sample())


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.integers(-1000, 1000), min_size=1, max_size=40),
    chunks=st.lists(st.none() | st.integers(1, 40), min_size=len(WORKER_COUNTS), max_size=len(WORKER_COUNTS)),
    submit=st.booleans(),
)
def test_seeded_results_do_not_depend_on_workers_or_chunks(
    seeded_executors: list[cloudburst.Executor], items: list[int], chunks: list[int | None], submit: bool
) -> None:
    results = []
    for ex, chunksize in zip(seeded_executors, chunks, strict=True):
        if submit:
            futures = [ex.submit(draws, x) for x in items]
            results.append([f.result(timeout=120) for f in futures])
        else:
            results.append(list(ex.map(draws, items, chunksize=chunksize, timeout=120)))
    assert all(r == results[0] for r in results[1:]), "the same seed gave different draws"
    first = results[0]
    assert [r[0] for r in first] == items
    indices = [r[1] for r in first]
    assert indices == list(range(indices[0], indices[0] + len(items)))
    assert [r[2:] for r in first] == [_expected(i) for i in indices]


def total(a: np.ndarray) -> float:
    return float(a.sum())


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.integers(-1000, 1000), min_size=2, max_size=4, unique=True))
def test_a_changed_argument_reaches_the_worker(seeded_executors: list[cloudburst.Executor], values: list[int]) -> None:
    """Submit, read, change the array, submit again: the worker sees the change (the seed plays no part here)."""
    ex = seeded_executors[-1]
    array = np.zeros(BUFFER_MIN_BYTES // 8 * 2, dtype=np.int64)
    for value in values:
        array[:] = value
        assert ex.submit(total, array).result(timeout=120) == float(array.sum())
