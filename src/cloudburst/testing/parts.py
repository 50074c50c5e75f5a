"""The contract of each part on its own: Store, Queue and Launcher, as ``cloudburst.backends.base`` states it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cloudburst.backends.base import EXIT_REASON_PREFIX, Message, Queue, WorkerExit

from .fixtures import ContractFixtures, OpenJob, open_job, wait_until


def _unique() -> str:
    return uuid.uuid4().hex[:12]


class StoreContract(ContractFixtures):
    """Store: atomic put, get raising FileNotFoundError, exists, get_file, delete_prefix."""

    def test_store_put_get_and_overwrite(self, contract_job: OpenJob) -> None:
        store, key = contract_job.resources.store, f"contract/{_unique()}/blob"
        store.put(key, b"first")
        assert store.get(key) == b"first"
        store.put(key, memoryview(b"second, longer"))
        assert store.get(key) == b"second, longer"

    def test_store_missing_key_is_file_not_found(self, contract_job: OpenJob) -> None:
        store = contract_job.resources.store
        with pytest.raises(FileNotFoundError):
            store.get(f"contract/{_unique()}/missing")
        assert store.exists(f"contract/{_unique()}/missing") is False

    def test_store_exists_and_get_file(self, contract_job: OpenJob, tmp_path: Any) -> None:
        store, key = contract_job.resources.store, f"contract/{_unique()}/file"
        data = bytes(range(256)) * 4096  # 1 MiB
        store.put(key, data)
        assert store.exists(key) is True
        assert store.get_file(key, tmp_path).read_bytes() == data

    def test_store_delete_prefix(self, contract_job: OpenJob) -> None:
        store, top = contract_job.resources.store, f"contract/{_unique()}"
        for key in (f"{top}/a/1", f"{top}/a/2", f"{top}/b/1"):
            store.put(key, b"x")
        store.delete_prefix(f"{top}/a/")
        assert not store.exists(f"{top}/a/1") and not store.exists(f"{top}/a/2")
        assert store.get(f"{top}/b/1") == b"x"
        store.delete_prefix(f"{top}/nothing/")  # deleting what is not there is not an error


def _take(queue: Queue, tag: bytes, count: int, timeout: float = 30.0) -> list[Message]:
    """Receive until ``count`` messages whose body starts with ``tag`` came; acknowledge strangers (a
    previous test's leftovers)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for message in queue.receive(10, wait=1.0):
            if message.body.startswith(tag):
                got.append(message)
            else:
                queue.ack([message.receipt])
    return got


def _none_of(queue: Queue, tag: bytes, wait: float = 1.0) -> bool:
    """No message starting with ``tag`` is delivered within ``wait`` seconds (strangers are acknowledged)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for message in queue.receive(10, wait=max(0.0, deadline - time.monotonic())):
            if message.body.startswith(tag):
                return False
            queue.ack([message.receipt])
    return True


class QueueContract(ContractFixtures):
    """Queue: byte-exact delivery, leases, release by extend(0), redelivery with receive_count, idempotent ack."""

    @pytest.fixture
    def queue(self, contract_job: OpenJob) -> Iterator[Queue]:
        """The job's task queue."""
        yield contract_job.resources.tasks

    def test_queue_delivers_bytes_exactly_once_acknowledged(self, queue: Queue) -> None:
        tag = _unique().encode()
        bodies = [tag + bytes([i]) * i + b"\x00\xff" for i in range(25)]
        queue.send_batch(bodies)
        got = _take(queue, tag, 25)
        assert sorted(m.body for m in got) == sorted(bodies)
        assert {m.receive_count for m in got} == {1}
        queue.ack([m.receipt for m in got])
        assert _none_of(queue, tag)

    def test_queue_carries_the_largest_message(self, queue: Queue, contract_job: OpenJob) -> None:
        tag = _unique().encode()
        body = tag + bytes(range(256)) * ((contract_job.backend.max_message_bytes - 4096) // 256)
        queue.send_batch([body])
        (got,) = _take(queue, tag, 1)
        assert got.body == body
        queue.ack([got.receipt])

    def test_queue_receive_waits_then_returns_nothing(self, queue: Queue) -> None:
        started = time.monotonic()
        assert _none_of(queue, _unique().encode(), wait=0.5)
        assert time.monotonic() - started < 30

    def test_queue_lease_hides_the_message(self, queue: Queue) -> None:
        tag = _unique().encode()
        queue.send_batch([tag])
        (leased,) = _take(queue, tag, 1)
        assert _none_of(queue, tag, wait=1.0)  # leased: nobody else gets it
        queue.ack([leased.receipt])

    def test_queue_extend_zero_releases_now(self, queue: Queue) -> None:
        tag = _unique().encode()
        queue.send_batch([tag])
        (first,) = _take(queue, tag, 1)
        queue.extend([first.receipt], 0)
        (again,) = _take(queue, tag, 1, timeout=10)
        assert again.body == tag and again.receive_count == first.receive_count + 1
        queue.ack([again.receipt])

    def test_queue_expired_lease_redelivers(self, queue: Queue) -> None:
        tag = _unique().encode()
        queue.send_batch([tag])
        (first,) = _take(queue, tag, 1)
        queue.extend([first.receipt], 1)  # a worker that stops extending: its lease ends
        (again,) = _take(queue, tag, 1, timeout=30)
        assert again.receive_count == 2
        queue.ack([again.receipt])
        assert _none_of(queue, tag, wait=1.0)

    def test_queue_ack_and_extend_are_idempotent(self, queue: Queue) -> None:
        tag = _unique().encode()
        queue.send_batch([tag])
        (message,) = _take(queue, tag, 1)
        queue.ack([message.receipt])
        queue.ack([message.receipt])  # acknowledged twice: ignored
        queue.extend([message.receipt], 0)  # no longer leased: ignored, and not delivered again
        queue.ack([])
        assert _none_of(queue, tag)


def _exits_of(launcher: Any, ids: list[str], timeout: float) -> list[WorkerExit]:
    """Poll until every worker in ``ids`` was reported stopped; every report, as given."""
    exits: list[WorkerExit] = []

    def all_reported() -> bool:
        exits.extend(launcher.poll())
        return {e.worker_id for e in exits} >= set(ids)

    wait_until(all_reported, timeout)
    return exits


class LauncherContract(ContractFixtures):
    """Launcher: start returns ids; running counts them; stop stops; poll reports each exit once, with why."""

    @pytest.fixture(scope="class")
    @classmethod
    def idle_job(cls, backend: tuple[str, dict[str, Any]]) -> Iterator[OpenJob]:
        """A job whose workers retire after one idle second."""
        job = open_job(*backend, idle_timeout=1.0, control_period=0.5)
        yield job
        job.close()

    def test_launcher_worker_that_retires_exits_zero(self, idle_job: OpenJob) -> None:
        launcher = idle_job.resources.launcher
        ids = launcher.start(1)
        assert len(ids) == 1 and "." not in ids[0]
        assert launcher.running() >= 1  # counted from the start, not once it is up
        exits = _exits_of(launcher, ids, timeout=120)
        assert [e.worker_id for e in exits] == ids  # reported once
        assert exits[0].exit_code == 0 and exits[0].reason and not exits[0].interrupted
        assert launcher.poll() == [] and launcher.running() == 0

    def test_launcher_stop_is_reported(self, idle_job: OpenJob) -> None:
        launcher = idle_job.resources.launcher
        ids = launcher.start(2)
        assert len(set(ids)) == 2
        launcher.stop([ids[0]])
        launcher.stop([ids[0]])  # stopping a stopped worker is not an error
        exits = _exits_of(launcher, ids, timeout=120)
        assert sorted(e.worker_id for e in exits) == sorted(ids)
        assert launcher.running() == 0

    def test_launcher_reports_a_worker_that_cannot_start(self, backend: tuple[str, dict[str, Any]]) -> None:
        self.needs_isolated_workers()
        name, options = backend
        job = open_job(name, {**options, "env": {**options.get("env", {}), "PYTHONHOME": "/nonexistent"}})
        try:
            ids = job.resources.launcher.start(1)
            (exit_,) = _exits_of(job.resources.launcher, ids, timeout=120)
        finally:
            job.close()
        assert exit_.exit_code not in (0, None) and exit_.reason
        assert not exit_.got_ready  # a start-up failure: it never connected to its job
        assert EXIT_REASON_PREFIX not in exit_.reason
