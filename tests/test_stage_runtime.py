"""The stage runtime on every backend: StageCall on a worker, values kept in the job's store as refs, moved
between stores server-side (local, inline and emulated Fargate)."""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cloudburst
from cloudburst import seeds
from cloudburst.backends.base import Store
from cloudburst.backends.local import LocalStore
from cloudburst.errors import PayloadAuthenticationError, PicklingError
from cloudburst.protocol.blobs import BlobRef, Packed
from cloudburst.stages import valuehash
from cloudburst.stages.refs import ArgRef, StageResult, ValueRef
from cloudburst.stages.remote import INLINE_LIMIT, StageCall, copy_blobs, load_value
from cloudburst.stages.transfer import copy_blob
from cloudburst.worker import context

from .conftest import leftover_check

TIMEOUT = 120
EXECUTOR_SEED = 99


@pytest.fixture(scope="module", params=["local", "inline", "fargate"])
def executors(request: pytest.FixtureRequest) -> Iterator[list[cloudburst.Executor]]:
    """Two executors on one backend, shared by this file's tests: the first (two workers, seeded) runs the
    calls, the second receives copies; they must leave nothing behind."""
    if request.param == "fargate":
        request.getfixturevalue("emulator")
    made = [
        cloudburst.Executor(2, backend=request.param, seed=EXECUTOR_SEED),
        cloudburst.Executor(1, backend=request.param),
    ]
    yield made
    checks = [leftover_check(ex) for ex in made]
    for ex in made:
        ex.terminate()
    for check in checks:
        check()


def submit(ex: cloudburst.Executor, call: StageCall, *args: Any, index: int = 0, **kwargs: Any) -> Future[Any]:
    return ex.submit(call, index, args, kwargs)


def run(ex: cloudburst.Executor, call: StageCall, *args: Any, index: int = 0, **kwargs: Any) -> StageResult:
    result = submit(ex, call, *args, index=index, **kwargs).result(timeout=TIMEOUT)
    assert isinstance(result, StageResult)
    return result


def value(ex: cloudburst.Executor, ref: ValueRef) -> Any:
    return load_value(ref, ex._job.unpacker)


def store_of(ex: cloudburst.Executor) -> Store:
    return ex._job.resources.store


# ---------------------------------------------------------------------------- stage functions


def add(a: int, b: int) -> int:
    return a + b


def uniform(n: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(n).random(n)  # random: zstd would shrink a regular array


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def random_chunks(n: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def repeated(n: int) -> bytes:
    return b"x" * n


def length(x: Any) -> int:
    return len(x)


def structure(xs: list[Any], pair: tuple[Any, ...], *, table: dict[str, Any]) -> dict[str, Any]:
    return {"xs": xs, "pair": pair, "table": table, "shared": xs[0] is pair[0]}


def squares(n: int, kind: type) -> Any:
    return kind(i * i for i in range(n))


def draws() -> list[float]:
    return cloudburst.rng().random(4).tolist()  # type: ignore[no-any-return]


def indexed_draws() -> tuple[int | None, list[float]]:
    return seeds.current_item(), cloudburst.rng().random(4).tolist()


def worker_view() -> tuple[str, str] | None:
    here = context.current()
    return None if here is None else (here.worker_id, type(here.store).__name__)


def a_lock() -> Any:
    return threading.Lock()


def lock_inside() -> list[Any]:
    return [1, threading.Lock()]


def reference_draws(seed: int, index: int) -> list[float]:
    sequence = np.random.SeedSequence(seed, spawn_key=(index,))
    return np.random.Generator(np.random.PCG64(sequence)).random(4).tolist()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- values through the store


def test_values_chain_through_the_store(executors: list[cloudburst.Executor]) -> None:
    ex = executors[0]
    first = run(ex, StageCall(add, "m:add"), 1, 2)
    assert first.ref.digest == valuehash.digest(3)
    assert first.ref.blobs() == () and first.ref.packed is not None and first.ref.packed.inline is not None
    assert first.worker and first.started <= first.ended
    second = run(ex, StageCall(add, "m:add"), ArgRef(first.ref), b=10)
    assert value(ex, second.ref) == 13


def test_context_is_set_only_around_a_task(executors: list[cloudburst.Executor]) -> None:
    ex = executors[0]
    seen = ex.submit(worker_view).result(timeout=TIMEOUT)
    assert seen is not None and seen[0] and seen[1] in ("LocalStore", "S3Store")
    assert context.current() is None  # not in the client, not even where the inline backend's workers live


@pytest.mark.parametrize("make", [uniform, random_bytes], ids=["numpy", "bytes"])
def test_a_large_result_stays_in_the_store(executors: list[cloudburst.Executor], make: Callable[[int], Any]) -> None:
    ex = executors[0]
    count = 5 << 20 if make is random_bytes else (5 << 20) // 8
    made = run(ex, StageCall(make, "m:large"), count).ref
    assert made.packed is not None and len(made.packed.inline or b"") <= INLINE_LIMIT
    assert sum(blob.size for blob in made.blobs()) >= 5 << 20
    assert made.nbytes >= 5 << 20 and made.length == count
    assert run(ex, StageCall(length, "m:length"), ArgRef(made)).ref.digest == valuehash.digest(count)
    loaded = value(ex, made)
    assert len(loaded) == count and valuehash.digest(loaded) == made.digest
    if make is uniform:
        np.testing.assert_array_equal(loaded, uniform(count))


def test_a_result_over_64_kib_is_a_blob_though_the_worker_would_inline_it(
    executors: list[cloudburst.Executor],
) -> None:
    made = run(executors[0], StageCall(repeated, "m:repeated"), 100_000).ref
    assert made.packed is not None and made.packed.inline is None and made.packed.blob is not None
    assert value(executors[0], made) == repeated(100_000)


def test_refs_nested_in_lists_tuples_and_dicts(executors: list[cloudburst.Executor]) -> None:
    ex = executors[0]
    listed = run(ex, StageCall(squares, "m:squares"), 3, list).ref
    three = run(ex, StageCall(add, "m:add"), 1, 2).ref
    out = run(
        ex, StageCall(structure, "m:structure"), [ArgRef(listed), 5], (ArgRef(listed), [ArgRef(three)]),
        table={"a": ArgRef(three), "b": {"c": (ArgRef(listed),)}},
    ).ref  # fmt: skip
    assert value(ex, out) == {
        "xs": [[0, 1, 4], 5],
        "pair": ([0, 1, 4], [3]),
        "table": {"a": 3, "b": {"c": ([0, 1, 4],)}},
        "shared": True,  # one value named by several ArgRefs of one call is loaded once
    }


@pytest.mark.parametrize("kind", [list, tuple])
def test_elements_are_stored_as_parts(executors: list[cloudburst.Executor], kind: type) -> None:
    ex = executors[0]
    made = run(ex, StageCall(squares, "m:squares", elements=True), 4, kind).ref
    expected = kind(i * i for i in range(4))
    assert made.packed is None and made.parts is not None
    assert (made.kind, made.length, len(made.parts)) == (kind.__name__, 4, 4)
    assert made.digest == valuehash.digest(expected)
    assert made.nbytes == sum(part.nbytes for part in made.parts)
    for part, element in zip(made.parts, expected, strict=True):
        assert part.digest == valuehash.digest(element) and value(ex, part) == element
    assert run(ex, StageCall(add, "m:add"), ArgRef(made.parts[3]), 1).ref.digest == valuehash.digest(10)
    whole = value(ex, made)
    assert type(whole) is kind and whole == expected


def test_elements_leave_other_values_whole(executors: list[cloudburst.Executor]) -> None:
    made = run(executors[0], StageCall(add, "m:add", elements=True), 1, 2).ref
    assert made.parts is None and value(executors[0], made) == 3


def test_a_seeded_call_draws_the_same_on_any_worker(executors: list[cloudburst.Executor]) -> None:
    ex = executors[0]  # its own seed (EXECUTOR_SEED) is overridden by the call's
    calls = [submit(ex, StageCall(draws, "m:draws", seed=7), index=3) for _ in range(6)]
    results = [future.result(timeout=TIMEOUT) for future in calls]
    assert all(value(ex, result.ref) == reference_draws(7, 3) for result in results)
    assert value(ex, run(ex, StageCall(draws, "m:draws", seed=7), index=4).ref) == reference_draws(7, 4)
    # Items after a seeded stage call, on the same workers, are seeded by the executor again.
    plain = [ex.submit(indexed_draws) for _ in range(4)]
    for future in plain:
        index, numbers = future.result(timeout=TIMEOUT)
        assert index is not None and numbers == reference_draws(EXECUTOR_SEED, index)


# ---------------------------------------------------------------------------- moving blobs between stores


class _S3Calls:
    """The S3 operations a store's client makes while in use (a botocore event hook on it)."""

    def __init__(self, *stores: Store) -> None:
        self.clients = list({id(c): c for c in (getattr(s, "_s3", None) for s in stores) if c is not None}.values())
        self.operations: list[str] = []

    def record(self, model: Any, **_: Any) -> None:
        self.operations.append(model.name)

    def __enter__(self) -> _S3Calls:
        for client in self.clients:
            client.meta.events.register("before-call.s3", self.record, unique_id="test-stage-runtime")
        return self

    def __exit__(self, *_: object) -> None:
        for client in self.clients:
            client.meta.events.unregister("before-call.s3", unique_id="test-stage-runtime")


def test_copy_blobs_between_executors_is_server_side(executors: list[cloudburst.Executor]) -> None:
    source, target = executors
    made = run(source, StageCall(random_bytes, "m:random"), 3 << 20).ref
    src, dst = store_of(source), store_of(target)
    with _S3Calls(src, dst) as calls:
        copy_blobs(made, src, dst)
    if isinstance(dst, LocalStore):
        assert isinstance(src, LocalStore)
        for blob in made.blobs():
            before, after = (src.root / blob.key).stat(), (dst.root / blob.key).stat()
            if before.st_dev == after.st_dev:
                assert before.st_ino == after.st_ino  # a hard link: no byte copied
    else:
        assert "CopyObject" in calls.operations
        assert not {"GetObject", "PutObject"} & set(calls.operations), calls.operations
    assert run(target, StageCall(length, "m:length"), ArgRef(made)).ref.digest == valuehash.digest(3 << 20)


def test_copy_blobs_of_parts(executors: list[cloudburst.Executor]) -> None:
    source, target = executors
    made = run(source, StageCall(random_chunks, "m:chunks", elements=True), 5, 100_000).ref
    assert made.parts is not None and len(made.blobs()) == 5
    copy_blobs(made, store_of(source), store_of(target))
    assert run(target, StageCall(length, "m:length"), ArgRef(made)).ref.digest == valuehash.digest(5)
    assert run(target, StageCall(length, "m:length"), ArgRef(made.parts[4])).ref.digest == valuehash.digest(100_000)


def test_copy_blob_to_and_from_a_folder(executors: list[cloudburst.Executor], tmp_path: Path) -> None:
    job_store = store_of(executors[0])
    other = LocalStore(tmp_path / "other")
    other.put("blobs/a", b"from elsewhere")
    copy_blob(other, "blobs/a", job_store, "blobs/copied-in")
    assert job_store.get("blobs/copied-in") == b"from elsewhere"
    copy_blob(job_store, "blobs/copied-in", other, "blobs/copied-out")
    assert other.get("blobs/copied-out") == b"from elsewhere"
    with pytest.raises(FileNotFoundError):
        copy_blob(other, "blobs/missing", job_store, "blobs/missing")
    with pytest.raises(FileNotFoundError):
        copy_blob(job_store, "blobs/missing", store_of(executors[1]), "blobs/missing")


def test_a_folder_blob_copied_onto_itself_is_left_whole(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("blobs/a", b"kept")
    assert LocalStore(tmp_path).copy_from(store, "blobs/a", "blobs/a")
    assert store.get("blobs/a") == b"kept"
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["a"]  # no temporary link left behind


def test_refs_pickle_compactly_and_list_each_blob_once() -> None:
    shared, own = BlobRef("a" * 64, 10), BlobRef("b" * 64, 20, zstd=True)
    parts = (
        ValueRef("d1", Packed(None, shared), nbytes=10),
        ValueRef("d2", Packed(b"R...", None, (own, shared)), nbytes=24),
    )
    ref = ValueRef("d", None, parts, "list", 2, 34)
    assert ref.blobs() == (shared, own)
    for obj in (ref, ArgRef(ref), StageResult(ref, "w1", 1.0, 2.0)):
        data = pickle.dumps(obj, protocol=5)
        assert pickle.loads(data) == obj
        ops = {op.name for op, _, _ in pickletools.genops(data)}
        assert "BUILD" not in ops and "NEWOBJ" not in ops  # a call of the constructor, not object + state


# ---------------------------------------------------------------------------- failures


def _altered_input(ex: cloudburst.Executor) -> Future[Any]:
    """A consumer whose input blob was overwritten in the store after it was made."""
    made = run(ex, StageCall(random_bytes, "m:random"), 2 << 20).ref
    (blob,) = made.blobs()
    store_of(ex).put(blob.key, bytes(blob.size))
    return submit(ex, StageCall(length, "m:length"), ArgRef(made))


#: (what goes wrong, how to make it happen, the error the client sees, what its message says)
FAILURES = [
    ("an input blob altered in the store", _altered_input, PayloadAuthenticationError,
     r"does not match its sha256 \(altered in the store\); it was not used"),
    ("an unpicklable result", lambda ex: submit(ex, StageCall(a_lock, "m:a_lock")), PicklingError,
     r"the result of stage m:a_lock cannot be pickled or hashed: _thread\.lock"),
    ("an unpicklable element", lambda ex: submit(ex, StageCall(lock_inside, "m:parts", elements=True)),
     PicklingError, r"element 1 of the result of stage m:parts cannot be pickled or hashed: _thread\.lock"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "make", "error", "message"), FAILURES, ids=[row[0] for row in FAILURES])
def test_failure(
    executors: list[cloudburst.Executor],
    what: str,
    make: Callable[[cloudburst.Executor], Future[Any]],
    error: type[Exception],
    message: str,
) -> None:
    future = make(executors[0])
    with pytest.raises(error, match=message):
        future.result(timeout=TIMEOUT)
    assert run(executors[0], StageCall(add, "m:add"), 1, 1).ref.digest == valuehash.digest(2)  # the worker goes on


def test_a_stage_call_outside_a_worker_says_so() -> None:
    with pytest.raises(RuntimeError, match=re.escape("stage m:add: a StageCall runs only on a cloudburst worker")):
        StageCall(add, "m:add")(0, (1, 2), {})
