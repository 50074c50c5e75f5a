"""Once the caller drops its futures and results, the executor holds none of them.

Large arguments and results pass through the client's Packer and Unpacker, and
through ``map``'s iterator; none of them may keep a reference (or a copy) after
the caller has let go.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import cloudburst
from cloudburst.protocol.serialize import Packer, Unpacker

from .conftest import wait_until

MB = 1 << 20


def rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def plus_one(a: np.ndarray) -> np.ndarray:
    a += 1  # the worker's copy is private to it (copy-on-write)
    return a


class Payload:
    """A weak-referenceable argument or result."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def size(self) -> int:
        return len(self.data)

    def __len__(self) -> int:
        return len(self.data)


def make_payload(n: int) -> Payload:
    return Payload(b"x" * n)


@pytest.fixture
def local_executor() -> Iterator[cloudburst.Executor]:
    with cloudburst.Executor(2) as ex:
        yield ex


def test_rss_returns_after_large_arguments_and_results(local_executor: cloudburst.Executor) -> None:
    """Ten 100 MB arguments and results, each submitted, read and dropped: RSS ends within 10% of its start."""
    rng = np.random.default_rng(1)
    small = rng.random(MB // 8 * 2)  # 2 MB warms every path (out-of-band buffers, blobs) before measuring
    assert np.array_equal(local_executor.submit(plus_one, small).result(timeout=60), small + 1)
    del small
    gc.collect()
    before = rss()
    for _ in range(10):
        argument = rng.random(100 * MB // 8)  # random: incompressible, so all of it travels
        future = local_executor.submit(plus_one, argument)
        result = future.result(timeout=120)
        assert result[0] == argument[0] + 1 and result.nbytes == argument.nbytes
        del argument, future, result
    gc.collect()
    after = rss()
    print(f"RSS before {before / MB:.0f} MiB, after {after / MB:.0f} MiB")
    assert after < 1.1 * before, f"RSS grew from {before / MB:.0f} MiB to {after / MB:.0f} MiB"


def _collected(make: Callable[[], Any], use: Callable[[Any], Any]) -> bool:
    """Make an object, let ``use`` pass it through the executor, drop it: is it collected?"""
    obj = make()
    ref = weakref.ref(obj)
    use(obj)
    del obj
    return wait_until(lambda: gc.collect() >= 0 and ref() is None, timeout=10)


def test_bound_method_is_released(local_executor: cloudburst.Executor) -> None:
    """The function's cache must not keep a bound method, and with it its object, alive."""
    assert _collected(
        lambda: Payload(b"y" * 1000), lambda p: local_executor.submit(p.size).result(timeout=30) == 1000
    ), "the executor kept the object of a submitted bound method"


def test_result_is_released_by_map(local_executor: cloudburst.Executor) -> None:
    """map's iterator gives up each result as it yields it."""
    for payload in local_executor.map(make_payload, [200_000] * 4):
        ref = weakref.ref(payload)
        del payload
        gc.collect()
        assert ref() is None, "map's iterator kept a result it had yielded"


def test_packer_keeps_no_argument(tmp_path: Any) -> None:
    """A large argument seen twice is shared through the store, but the packer keeps no reference to it."""
    from cloudburst.backends.local import LocalStore

    packer = Packer(LocalStore(tmp_path / "store"), inline_limit=1 << 16)
    (tmp_path / "cache").mkdir()
    unpacker = Unpacker(LocalStore(tmp_path / "store"), tmp_path / "cache")
    for make in (lambda: np.arange(100_000.0), lambda: Payload(os.urandom(200_000))):
        value = make()
        ref = weakref.ref(value)
        calls: list[tuple[tuple[object, ...], dict[str, object] | None]] = [((value, i), None) for i in range(3)]
        shared = packer.shared_arguments(calls)
        assert id(value) in shared, "a large argument repeated across calls was not shared"
        back = unpacker.unpack(packer.pack(calls, shared=shared))
        assert isinstance(back, list) and len(back) == 3
        del value, calls, shared, back
        gc.collect()
        assert ref() is None, "the packer kept a reference to a shared argument"


def test_packer_shares_unreferenceable_arguments_by_content(tmp_path: Any) -> None:
    """A list cannot be weakly referenced: it is still shared when repeated, and still not kept."""
    from cloudburst.backends.local import LocalStore

    store = LocalStore(tmp_path / "store")
    packer = Packer(store, inline_limit=1 << 16)
    (tmp_path / "cache").mkdir()
    unpacker = Unpacker(store, tmp_path / "cache")
    table = [os.urandom(8).hex() for _ in range(50_000)]  # incompressible: its blob is large
    references = sys.getrefcount(table)
    first = packer.shared_arguments([((table, 0), None)])
    second = packer.shared_arguments([((table, 1), None)])  # a later task: seen again
    assert id(table) in second and not first
    written = packer.bytes_serialized
    third = packer.shared_arguments([((table, 2), None)])
    assert third[id(table)] == second[id(table)], "the same content must map to the same blob"
    assert packer.bytes_serialized == written, "a repeated argument must be stored once"
    assert unpacker.unpack(packer.pack([(table, 2)], shared=third)) == [(table, 2)]
    table[0] = "changed"  # shared by content: a changed list travels as it is now
    fourth = packer.shared_arguments([((table, 3), None)])
    assert unpacker.unpack(packer.pack([(table, 3)], shared=fourth)) == [(table, 3)]
    assert sys.getrefcount(table) == references, "the packer kept a reference to the list"


def test_unpacker_keeps_no_result_bytes(tmp_path: Any) -> None:
    """Result payloads read from the store are not kept in memory by the client's unpacker."""
    from cloudburst.backends.local import LocalStore

    store = LocalStore(tmp_path / "store")
    packer = Packer(store, inline_limit=1 << 16, compress=False)
    (tmp_path / "cache").mkdir()
    unpacker = Unpacker(store, tmp_path / "cache")
    gc.collect()
    before = rss()
    for i in range(4):
        packed = packer.pack(bytes([i]) * (50 * MB))  # a 50 MB result, stored as a blob
        assert packed.blob is not None
        value = unpacker.unpack(packed)
        assert isinstance(value, bytes) and len(value) == 50 * MB and value[0] == i
        del value, packed
    gc.collect()
    grown = rss() - before
    assert grown < 20 * MB, f"the unpacker keeps {grown / MB:.0f} MiB after the results were dropped"
