"""Messages cannot be replayed, and forged ones count against their queue, never against a task.

The contract is written down in ``cloudburst.protocol.task`` ("Replays and redeliveries"). ``FORGERIES`` at the end is
the failure table of what a message that fails its check does to a job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pickle
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

import cloudburst
from cloudburst.backends.base import WorkerExit
from cloudburst.protocol.sealing import MAGIC, job_tag, seal, unseal
from cloudburst.protocol.task import DIED, RESULT, STARTED, TASK, Notice, ResultMessage, encode

from .conftest import wait_until
from .test_hardening_core import die_once


def nap(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x


def count_run(x: int, log: str, seconds: float = 0.0) -> int:
    """Returns x; appends a line to ``log`` each time it runs, so a test can count the runs."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    time.sleep(seconds)
    return x


def runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


# ---------------------------------------------------------------------------- the seal


def test_the_seal_binds_the_job_and_a_unique_message_id() -> None:
    key, job, other = os.urandom(32), job_tag("a" * 32), job_tag("b" * 32)
    first, second = seal(key, TASK, b"body", job=job), seal(key, TASK, b"body", job=job)
    opened = unseal(key, first, job=job)
    assert (opened.kind, bytes(opened.body)) == (TASK, b"body")
    assert opened.message_id != unseal(key, second, job=job).message_id  # every message its own id
    with pytest.raises(cloudburst.PayloadAuthenticationError, match="sealed for another job"):
        unseal(key, first, job=other)
    # The job tag and the message id are inside the MAC: neither can be swapped.
    head = len(MAGIC) + 1 + 32
    for at in (head, head + 16):
        altered = bytearray(first)
        altered[at] ^= 1
        with pytest.raises(cloudburst.PayloadAuthenticationError, match="HMAC"):
            unseal(key, bytes(altered), job=None)


def test_a_message_in_the_old_wire_format_is_refused_unread() -> None:
    key = os.urandom(32)
    body = struct.pack("<Q", 1) + pickle.dumps(ResultMessage(1, "w", 1))
    old = b"CB\x01" + RESULT + hmac.new(key, RESULT + body, hashlib.sha256).digest() + body  # format 1
    with pytest.raises(cloudburst.PayloadAuthenticationError, match=r"wire format 1.*different cloudburst versions"):
        unseal(key, old, job=job_tag("a" * 32))


# ---------------------------------------------------------------------------- replays of task messages


def take_waiting_task(ex: cloudburst.Executor) -> bytes:
    """A copy of the one task message waiting in the queue, left in place, as someone reading the queue could."""
    tasks = ex._job.resources.tasks
    if hasattr(tasks, "pending"):  # the local queue
        assert wait_until(lambda: len(tasks.pending()) == 1, timeout=30)
        body: bytes = tasks.pending()[0]
        return body
    sqs = boto3.client("sqs")
    got: list[dict[str, Any]] = []

    def receive() -> bool:
        got.extend(sqs.receive_message(QueueUrl=tasks.url, WaitTimeSeconds=1).get("Messages", []))
        return bool(got)

    assert wait_until(receive, timeout=30)
    sqs.change_message_visibility(QueueUrl=tasks.url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=0)
    return base64.b64decode(got[0]["Body"])


def queue_empty(ex: cloudburst.Executor) -> bool:
    tasks = ex._job.resources.tasks
    if hasattr(tasks, "pending"):
        return len(tasks) == 0
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=tasks.url, AttributeNames=["All"])["Attributes"]
    counts = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
    return sum(int(attributes[name]) for name in counts) == 0


def test_a_replayed_task_message_is_not_run_again(make_executor: Any, tmp_path: Path) -> None:
    """A copy of a task message sent after its task finished: the worker that finished it drops it."""
    log = tmp_path / "runs"
    ex = make_executor(1)
    blocker = ex.submit(nap, 0, 2.0)  # holds the one worker while the next task's message is copied
    assert wait_until(blocker.running, timeout=60)
    victim = ex.submit(count_run, 7, str(log))
    copy = take_waiting_task(ex)
    assert victim.result(timeout=60) == 7 and blocker.result(timeout=60) == 0
    ex._job.resources.tasks.send_batch([copy])  # the replay
    assert wait_until(lambda: queue_empty(ex), timeout=60)
    assert ex.submit(nap, 8).result(timeout=60) == 8
    assert runs(log) == ["7"], "the replayed task ran again"
    assert ex._job.stats["tasks"] == 3


def test_a_redelivery_after_a_worker_died_still_runs(make_executor: Any, tmp_path: Path) -> None:
    """The same message delivered again because its worker died is not a replay: it runs."""
    ex = make_executor(1, retries=2)
    assert ex.submit(die_once, 5, str(tmp_path / "died")).result(timeout=120) == 5


# ---------------------------------------------------------------------------- replays on the results queue


def send_result_queue(ex: cloudburst.Executor, bodies: list[bytes]) -> None:
    ex._job.resources.results.send_batch(bodies)


def test_a_replayed_death_notice_counts_once(make_executor: Any) -> None:
    """A supervisor's notice that one of its processes died, sent again and again: one death, not a broken job
    (three deaths of workers that never ran anything would break it)."""
    ex = make_executor(1)
    job = ex._job
    assert ex.submit(nap, 1).result(timeout=60) == 1
    deaths = job.stats["worker_deaths"]
    notice = encode(job.key, DIED, 0, WorkerExit("ghost.1", 137, "killed"), job=job.tag)
    send_result_queue(ex, [notice] * 5)
    # Beyond the client's memory of message ids, a fresh copy of the same death changes nothing either.
    send_result_queue(ex, [encode(job.key, DIED, 0, WorkerExit("ghost.1", 137, "killed"), job=job.tag)])
    assert wait_until(lambda: job.stats["worker_deaths"] > deaths, timeout=30)
    assert ex.submit(nap, 2).result(timeout=60) == 2  # not broken
    assert job.stats["worker_deaths"] == deaths + 1


def test_a_replayed_started_notice_does_not_blame_a_running_task(tmp_path: Path) -> None:
    """A started notice older than the task's latest delivery (a replay, or one that came late) naming a dead
    worker: the task runs on where it is, not split and sent again (which would run its items twice)."""
    log = tmp_path / "runs"
    with cloudburst.Executor(1, progress=False) as ex:
        job = ex._job
        run = ex.map(count_run, [1, 2], [str(log)] * 2, [1.5] * 2, chunksize=2)
        assert wait_until(lambda: len(runs(log)) == 1, timeout=60)  # the chunk runs, delivered once
        job.watch.on_exit(WorkerExit("ghost", 137, "killed"))  # a worker that took it earlier and died
        send_result_queue(ex, [encode(job.key, STARTED, 0, Notice((1,), "ghost", (1,)), job=job.tag)])
        assert list(run) == [1, 2]
        assert sorted(runs(log)) == ["1", "2"], "the chunk was run again"
        assert job.stats["tasks"] == 1


# ---------------------------------------------------------------------------- forgeries never touch a task


def forged_tasks(ex: cloudburst.Executor, task_ids: list[int]) -> list[bytes]:
    """Task messages naming ``task_ids``, sealed under some other key."""
    return [encode(os.urandom(32), TASK, t, "not the job's key", job=ex._job.tag) for t in task_ids]


def forged_results(ex: cloudburst.Executor, task_id: int, n: int) -> list[bytes]:
    """Result messages naming ``task_id``, sealed under some other key."""
    return [encode(os.urandom(32), RESULT, task_id, ResultMessage(task_id, "w1", 1), job=ex._job.tag)] * n


def test_forged_task_messages_neither_fail_nor_resend_the_task_they_name(
    make_executor: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = make_executor(1)
    blocker = ex.submit(nap, 2, 1.5)
    assert wait_until(blocker.running, timeout=60)
    next_id = max(ex._job.table.tasks) + 1
    ex._job.resources.tasks.send_batch(forged_tasks(ex, [next_id] * 5))  # queued ahead of the task they name
    victim = ex.submit(abs, -5)
    assert victim.result(timeout=60) == 5 and blocker.result(timeout=60) == 2
    assert wait_until(lambda: ex._job.collector.forged["tasks"] == 5, timeout=30)
    assert "tasks queue failed its check" in capsys.readouterr().err
    assert ex._job.stats["tasks"] == 2, "a forged message made the client send a task again"


def test_forged_results_neither_fail_nor_resend_the_task_they_name(make_executor: Any) -> None:
    ex = make_executor(1)
    future = ex.submit(nap, 5, 2.0)
    assert wait_until(future.running, timeout=60)
    send_result_queue(ex, forged_results(ex, max(ex._job.table.tasks), 5))
    assert future.result(timeout=60) == 5
    assert ex._job.stats["tasks"] == 1, "a forged result made the client send its task again"


def test_a_tampered_task_message_is_refused_unread_and_counted(
    make_executor: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone with access to the queue alters a waiting task: it is refused unread and counted against the
    tasks queue. Its message is lost, as if deleted (no seal can prevent that); it is not run, failed or sent
    again on the word of the altered copy."""
    ex = make_executor(1)
    blocker = ex.submit(nap, 2, 1.5)
    assert wait_until(blocker.running, timeout=60)
    victim = ex.submit(abs, -3)
    tamper_with_waiting_task(ex)
    assert blocker.result(timeout=60) == 2
    assert wait_until(lambda: ex._job.collector.forged["tasks"] == 1, timeout=60)
    assert re.search(r"tasks queue failed its check .*HMAC.*1 so far, the job stops at 20", capsys.readouterr().err)
    assert ex.submit(abs, -4).result(timeout=60) == 4
    assert not victim.done() and ex._job.stats["tasks"] == 3


def tamper_with_waiting_task(ex: cloudburst.Executor) -> None:
    """Flip a byte of the one task waiting in the queue."""
    tasks = ex._job.resources.tasks
    if hasattr(tasks, "pending"):  # the local queue
        assert wait_until(lambda: len(tasks.pending()) == 1, timeout=10)
        body = bytearray(tasks.pending()[0])
        body[-5] ^= 0xFF
        tasks.replace_pending(0, bytes(body))
        return
    sqs = boto3.client("sqs")
    messages: list[dict[str, Any]] = []

    def receive() -> bool:
        messages.extend(sqs.receive_message(QueueUrl=tasks.url, WaitTimeSeconds=1).get("Messages", []))
        return bool(messages)

    assert wait_until(receive, timeout=30)
    body = bytearray(base64.b64decode(messages[0]["Body"]))
    body[-5] ^= 0xFF
    sqs.send_message(QueueUrl=tasks.url, MessageBody=base64.b64encode(bytes(body)).decode())
    sqs.delete_message(QueueUrl=tasks.url, ReceiptHandle=messages[0]["ReceiptHandle"])


# ---------------------------------------------------------------------------- the failure table


def other_jobs_task(ex: cloudburst.Executor) -> list[bytes]:
    """A real task message of this job's key, sealed for another job (as a copy from it would be)."""
    return [encode(ex._job.key, TASK, 1, "a task of another job", job=job_tag("f" * 32))] * 20


def old_format_results(ex: cloudburst.Executor) -> list[bytes]:
    body = struct.pack("<Q", 1) + pickle.dumps(ResultMessage(1, "w", 1))
    mac = hmac.new(ex._job.key, RESULT + body, hashlib.sha256).digest()
    return [b"CB\x01" + RESULT + mac + body] * 20


def misplaced_tasks(ex: cloudburst.Executor) -> list[bytes]:
    """Genuine, sealed task messages copied onto the results queue (twenty different ones: copies of one
    message are dropped as such before they are looked at)."""
    return [encode(ex._job.key, TASK, 1, "a task", job=ex._job.tag) for _ in range(20)]


@dataclass(frozen=True)
class Forgery:
    """Twenty messages of one kind on one queue: the job must stop with ForgedMessagesError naming the queue."""

    name: str
    queue: str  # the queue they arrive on, and the one the error names
    make: Callable[[cloudburst.Executor], list[bytes]]


FORGERIES = [
    Forgery("sealed under another key", "tasks", lambda ex: forged_tasks(ex, [1] * 20)),
    Forgery("sealed for another job", "tasks", other_jobs_task),
    Forgery("forged results", "results", lambda ex: forged_results(ex, 1, 20)),
    Forgery("the old wire format", "results", old_format_results),
    Forgery("a task copied onto the results queue", "results", misplaced_tasks),
]


@pytest.mark.parametrize("forgery", FORGERIES, ids=lambda f: f.name)
def test_forged_messages_that_keep_coming_stop_the_job(make_executor: Any, forgery: Forgery) -> None:
    ex = make_executor(2)
    running = ex.submit(nap, 2, 60.0)
    assert wait_until(running.running, timeout=60)
    finished = ex.submit(nap, 1)
    assert finished.result(timeout=60) == 1  # on a second worker, which is then free to take the forgeries
    queue = ex._job.resources.tasks if forgery.queue == "tasks" else ex._job.resources.results
    queue.send_batch(forgery.make(ex))
    with pytest.raises(cloudburst.ForgedMessagesError) as info:
        running.result(timeout=90)
    assert info.value.queue == forgery.queue and info.value.count == 20
    said = str(info.value)
    assert re.search(rf"20 messages on this job's {forgery.queue} queue .*failed their authenticity check", said)
    assert "Find out what can write to that queue" in said
    with pytest.raises(cloudburst.BrokenExecutorError) as broken:
        ex.submit(nap, 3)
    assert isinstance(broken.value.cause, cloudburst.ForgedMessagesError)
    assert finished.result() == 1  # finished results are kept
