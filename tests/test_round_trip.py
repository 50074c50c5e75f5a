"""The warm round trip's fast paths keep results exact and every message authenticated.

The paths (``benchmarks/bench_core.py`` measures what they are for):

* a worker sends a task's result, its acknowledgement and its next receive in one frame (``F``), and its
  receive waits in no thread of the client's: the sender hands it the next task itself;
* the lease report of a task message the client sealed itself is read without a second seal check;
* tasks, results and notices travel as tuples of plain values; calls and results of plain scalars are
  pickled without cloudpickle.

``FORGERIES`` is the failure table of what a message that fails its check does on these paths.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import socket
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.backends.local import LocalStore
from cloudburst.backends.localqueue import MemoryQueue, QueueServer, RemoteQueue, connect
from cloudburst.config.options import ExecutorOptions
from cloudburst.core.packing import MAX_REMEMBERED, Sealer
from cloudburst.core.work import Task
from cloudburst.errors import PayloadAuthenticationError
from cloudburst.protocol.output import Capture
from cloudburst.protocol.sealing import MAGIC, job_tag, seal, unseal
from cloudburst.protocol.serialize import BlobRef, Packed, Packer
from cloudburst.protocol.task import (
    REJECTED,
    RESULT,
    STARTED,
    TASK,
    ItemError,
    Notice,
    ResultMessage,
    TaskMessage,
    encode,
    open_message,
)

from .conftest import wait_until

KEY = os.urandom(32)
TAG = job_tag("round-trip")
REF = BlobRef("ab" * 32, 123, True)


def echo(*args: Any, **kwargs: Any) -> Any:
    return (args, kwargs)


def same(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------- messages as plain values

MESSAGES = [
    (TASK, TaskMessage(7, REF, Packed(b"Rcalls", None, (REF,)), range(3, 9), True, 42, 4, 10)),
    (TASK, TaskMessage(8, REF, Packed(None, REF, ()), [5, 1])),
    (
        RESULT,
        ResultMessage(
            7,
            "w1.2",
            2,
            Packed(b"Rvalues", None, ()),
            {1: ItemError(b"pickled", "builtins.ValueError", "bad", "Traceback ...")},
            None,
            0.25,
            [[3, "stdout", "hello\n"], [4, "log", {"msg": "x", "levelno": 30}]],
            False,
        ),
    ),
    (RESULT, ResultMessage(9, "w1", 1, failure=ItemError(None, "x.Y", "gone", "tb"), split=True)),
    (STARTED, Notice((7, 8), "w3", (1, 2), receipts=("0.1", "1.1"))),
    (REJECTED, Notice((), "w3", detail="failed its HMAC check")),
]


@pytest.mark.parametrize(("kind", "message"), MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_come_back_exactly(kind: bytes, message: object) -> None:
    opened = open_message(KEY, encode(KEY, kind, 7, message, job=TAG), job=TAG)
    assert opened.kind == kind and opened.message == message and type(opened.message) is type(message)


@pytest.mark.parametrize(("kind", "values"), [(TASK, (1, 2)), (RESULT, ("x",)), (STARTED, tuple(range(7)))])
def test_a_sealed_message_that_is_not_its_kinds_plain_values_is_refused(kind: bytes, values: tuple[Any, ...]) -> None:
    """Only a holder of the job key can seal one; it is refused as a forged one is, not half read."""
    body = struct.pack("<Q", 1) + pickle.dumps(values, protocol=5)
    with pytest.raises(PayloadAuthenticationError, match="malformed"):
        open_message(KEY, seal(KEY, kind, body, job=TAG), job=TAG)


def test_a_message_of_the_dataclass_wire_form_still_opens() -> None:
    """The form before plain values (the dataclass pickled whole) reads as the same message."""
    result = ResultMessage(3, "w", 1, Packed(b"R1", None, ()))
    body = struct.pack("<Q", 3) + pickle.dumps(result, protocol=5)
    assert open_message(KEY, seal(KEY, RESULT, body, job=TAG), job=TAG).message == result


@pytest.mark.parametrize("key_size", [1, 32, 64, 65, 200])
def test_a_seal_is_hmac_sha256_of_kind_job_id_and_body(key_size: int) -> None:
    """The seal's MAC, computed from per-key hash states, is exactly ``hmac.new``'s (the wire format is kept)."""
    key = os.urandom(key_size)
    sealed = seal(key, RESULT, b"body", job=TAG)
    head = len(MAGIC) + 1
    expected = hmac.new(key, sealed[len(MAGIC) : head] + sealed[head + 32 :], hashlib.sha256).digest()
    assert sealed[head : head + 32] == expected
    assert bytes(unseal(key, sealed, job=TAG).body) == b"body"
    with pytest.raises(PayloadAuthenticationError):
        unseal(os.urandom(key_size), sealed, job=TAG)


# ---------------------------------------------------------------------------- the lease report's memory


def sealer(store: Path, remember: bool = True) -> Sealer:
    packer = Packer(LocalStore(store), inline_limit=1 << 20)
    return Sealer(KEY, TAG, packer, ExecutorOptions(workers=1), remember=remember)


def a_task(task_id: int) -> tuple[Task, list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    return Task(task_id, REF, [task_id]), [((task_id, "x"), {"k": 1.5})]


def test_a_sealed_body_is_known_once_by_its_very_bytes(tmp_path: Path) -> None:
    s = sealer(tmp_path)
    task, calls = a_task(5)
    body = s.seal(task, calls)
    forged = bytearray(body)
    forged[-3] ^= 0x01
    assert s.sealed_here(bytes(forged)) is None  # not these bytes: checked as before
    assert s.sealed_here(bytes(body)) == 5  # the same bytes (another object) are the same message
    assert s.sealed_here(body) is None  # forgotten at its first lease: a redelivery is checked
    opened = open_message(KEY, body, job=TAG).message
    assert isinstance(opened, TaskMessage) and opened.task_id == 5 and opened.with_kwargs


def test_a_sealer_remembers_only_when_asked_and_only_so_many(tmp_path: Path) -> None:
    quiet = sealer(tmp_path, remember=False)
    body = quiet.seal(*a_task(1))
    assert quiet.sealed_here(body) is None
    s = sealer(tmp_path)
    bodies = [s.seal(*a_task(i)) for i in range(MAX_REMEMBERED + 3)]
    assert s.sealed_here(bodies[0]) is None  # the oldest, never leased, were forgotten
    assert s.sealed_here(bodies[-1]) == MAX_REMEMBERED + 2


# ---------------------------------------------------------------------------- the queue server's finish frame


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[MemoryQueue, list[bytes], str]]:
    """A queue server for a tasks and a subscribed results queue: (tasks, results seen, address)."""
    tasks, results = MemoryQueue(30.0), MemoryQueue(30.0)
    seen: list[bytes] = []

    def consume(body: bytes) -> None:
        assert len(tasks) == 1, "a result must be handed over before its task is acknowledged"
        seen.append(body)

    results.subscribe(consume)
    address = str(tmp_path / "q.sock")
    server = QueueServer(address, KEY, [tasks, results])
    yield tasks, seen, address
    server.close()


def test_a_finish_frame_sends_the_result_then_acks_then_receives(
    served: tuple[MemoryQueue, list[bytes], str],
) -> None:
    tasks, seen, address = served
    remote_tasks, remote_results = connect(address, KEY, "w1", 2)
    tasks.send_batch([b"task 1"])
    [first] = remote_tasks.receive(1, 5)
    got = remote_tasks.finish_and_receive(remote_results, [b"result 1"], [first.receipt], 1, 0.2)
    assert got == [] and seen == [b"result 1"] and len(tasks) == 0


def test_a_waiting_receive_is_handed_the_next_task_by_its_sender(
    served: tuple[MemoryQueue, list[bytes], str],
) -> None:
    tasks, seen, address = served
    remote_tasks, remote_results = connect(address, KEY, "w1", 2)
    tasks.send_batch([b"task 1"])
    [first] = remote_tasks.receive(1, 5)
    got: list[Any] = []
    waiting = threading.Thread(
        target=lambda: got.extend(remote_tasks.finish_and_receive(remote_results, [b"r1"], [first.receipt], 1, 60)),
        daemon=True,
    )
    waiting.start()
    assert wait_until(lambda: seen == [b"r1"], timeout=30)
    tasks.send_batch([b"task 2"])  # handed over by this thread, to the receive waiting in none
    waiting.join(timeout=30)
    assert [m.body for m in got] == [b"task 2"]


def test_a_waiting_receive_gets_a_task_whose_lease_ran_out(tmp_path: Path) -> None:
    """A receive that waits in no thread still looks again when a lease runs out."""
    tasks = MemoryQueue(0.3)
    server = QueueServer(str(tmp_path / "q.sock"), KEY, [tasks])
    try:
        tasks.send_batch([b"task"])
        assert len(tasks.receive(1, 1, holder="stalled")) == 1  # never acknowledged
        [remote] = connect(server.address, KEY, "w2", 1)
        [again] = remote.receive(1, 30)
        assert again.body == b"task" and again.receive_count == 2
    finally:
        server.close()


def test_a_waiting_receive_ends_with_nothing_when_the_queue_closes(tmp_path: Path) -> None:
    tasks = MemoryQueue(30)
    server = QueueServer(str(tmp_path / "q.sock"), KEY, [tasks])
    try:
        [remote] = connect(server.address, KEY, "w1", 1)
        got: list[Any] = [None]
        waiting = threading.Thread(target=lambda: got.__setitem__(0, remote.receive(1, 60)), daemon=True)
        waiting.start()
        time.sleep(0.2)  # let the receive reach the server (the assertions hold either way)
        tasks.close()
        waiting.join(timeout=30)
        assert got[0] == []
    finally:
        server.close()


def test_a_task_handed_to_a_worker_that_hung_up_is_delivered_again(tmp_path: Path) -> None:
    tasks = MemoryQueue(30)
    server = QueueServer(str(tmp_path / "q.sock"), KEY, [tasks])
    try:
        [gone] = connect(server.address, KEY, "w1", 1)
        waiting = threading.Thread(target=lambda: _receive_quietly(gone), daemon=True)
        waiting.start()
        time.sleep(0.2)  # the receive waits in the server
        _hang_up(gone)
        tasks.send_batch([b"task"])
        got: list[Any] = []
        assert wait_until(lambda: bool(got.extend(tasks.receive(1, 0.2)) or got), timeout=20)
        assert got[0].body == b"task"
    finally:
        server.close()


def _receive_quietly(queue: RemoteQueue) -> None:
    try:
        queue.receive(1, 60)
    except (EOFError, OSError):
        pass


def _hang_up(queue: RemoteQueue) -> None:
    """End a worker's connection as its process would in dying."""
    conn = queue._conn  # the test plays a worker that dies: nothing public ends only the connection
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------- a worker's output capture


def test_a_workers_capture_stays_installed_and_takes_only_a_tasks_records() -> None:
    """Installed once, off between tasks, put back when a task removed it (``basicConfig(force=True)``)."""
    saved = (sys.stdout, sys.stderr, warnings.showwarning, warnings.filters[:])
    handlers, level = logging.root.handlers[:], logging.root.level
    capture = Capture()
    log = logging.getLogger("cloudburst-round-trip-test")
    try:
        capture.begin(logging.WARNING)
        log.warning("in the task")
        first = capture.end()
        log.warning("between tasks")  # reaches no capture: the list of the last task stays as it was
        logging.root.handlers.clear()
        capture.begin(logging.WARNING)
        log.warning("in the next task")
        second = capture.end()
    finally:
        sys.stdout, sys.stderr, warnings.showwarning, warnings.filters[:] = saved
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    assert [event[2]["msg"] for event in first] == ["in the task"]
    assert [event[2]["msg"] for event in second] == ["in the next task"]


# ---------------------------------------------------------------------------- through an executor


@pytest.fixture(scope="module")
def executor() -> Iterator[cloudburst.Executor]:
    with cloudburst.Executor(1, progress=False) as ex:
        yield ex


VALUES = [0, -(2**70), 1.5, float("inf"), True, None, "text", "é" * 50, b"\x00bytes", 2 + 3j, (1, "a"), [1.0], {}]


def test_warm_round_trips_return_exactly_what_was_sent(executor: cloudburst.Executor) -> None:
    for value in VALUES:
        back = executor.submit(same, value).result(timeout=60)
        assert back == value and type(back) is type(value)
    args, kwargs = executor.submit(echo, 1, "two", None, flag=False, x=2.5).result(timeout=60)
    assert args == (1, "two", None) and kwargs == {"flag": False, "x": 2.5}
    assert type(kwargs["flag"]) is bool
    big = "x" * 5000  # a long string is not a "scalar": it goes the sharing way, and comes back the same
    assert executor.submit(same, big).result(timeout=60) == big


def _forged_result(ex: cloudburst.Executor) -> bytes:
    body = bytearray(encode(ex._job.key, RESULT, 1, ResultMessage(1, "w", 1), job=ex._job.tag))
    body[-2] ^= 0xFF
    return bytes(body)


def _result_for_another_job(ex: cloudburst.Executor) -> bytes:
    return encode(ex._job.key, RESULT, 1, ResultMessage(1, "w", 1), job=job_tag("f" * 32))


def _malformed_result(ex: cloudburst.Executor) -> bytes:
    """Sealed with the job's key, but not a result's plain values."""
    body = struct.pack("<Q", 1) + pickle.dumps((1, "w"), protocol=5)
    return seal(ex._job.key, RESULT, body, job=ex._job.tag)


@dataclass(frozen=True)
class Forgery:
    """A message a worker sends in a finish frame: dropped unread and counted against the results queue."""

    name: str
    make: Callable[[cloudburst.Executor], bytes]


FORGERIES = [
    Forgery("a result that fails its HMAC check", _forged_result),
    Forgery("a result sealed for another job", _result_for_another_job),
    Forgery("a sealed result that is not a result's plain values", _malformed_result),
]


@pytest.mark.parametrize("forgery", FORGERIES, ids=lambda f: f.name)
def test_a_forged_result_in_a_finish_frame_is_refused(executor: cloudburst.Executor, forgery: Forgery) -> None:
    job = executor._job
    before = job.collector.forged["results"]
    [tasks, results] = connect(job.backend._server.address, job.key, "forger", 2)
    assert tasks.finish_and_receive(results, [forgery.make(executor)], ["0.0"], 1, 0) == []
    assert wait_until(lambda: job.collector.forged["results"] == before + 1, timeout=30)
    assert executor.submit(same, 5).result(timeout=60) == 5  # the job goes on


def test_a_replayed_result_in_a_finish_frame_is_dropped(executor: cloudburst.Executor) -> None:
    """A worker's genuine result sent again (replayed) neither counts as forged nor finishes anything twice."""
    job = executor._job
    copies: list[bytes] = []
    job.resources.results.subscribe(lambda body: (copies.append(body), job.collector.delivered(body)))
    try:
        assert executor.submit(same, 11).result(timeout=60) == 11
    finally:
        job.resources.results.subscribe(job.collector.delivered)
    result = next(b for b in copies if open_message(job.key, b, job=job.tag).kind == RESULT)
    forged_before = job.collector.forged["results"]
    [tasks, results] = connect(job.backend._server.address, job.key, "replayer", 2)
    assert tasks.finish_and_receive(results, [result], ["0.0"], 1, 0) == []
    assert executor.submit(same, 12).result(timeout=60) == 12
    assert job.collector.forged["results"] == forged_before


def test_a_forged_task_is_reported_leased_to_no_task_and_refused(executor: cloudburst.Executor) -> None:
    """Not sealed by this client: the lease report checks it, names no task, and the worker refuses it."""
    job = executor._job
    before = job.collector.forged["tasks"]
    forged = bytearray(encode(job.key, TASK, 1, "not a task", job=job.tag))
    forged[-2] ^= 0xFF
    job.resources.tasks.send_batch([bytes(forged)])
    assert wait_until(lambda: job.collector.forged["tasks"] == before + 1, timeout=30)
    assert executor.submit(same, 6).result(timeout=60) == 6
