"""Nothing in the client grows as workers × tasks: the counts behind scaling, the machine index behind a
worker's exit, and what the Fargate launcher keeps of stopped tasks; and the emulator bears a thousand
waiting polls (a message sent wakes a few of them, not all).

The table's tests count work, not time: a scaling step must not look at one future per item waiting.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any

from moto.sqs.models import sqs_backends

from cloudburst.backends.aws.launcher import cost_record
from cloudburst.backends.aws.pricing import task_cost
from cloudburst.core.table import TaskTable
from cloudburst.emulator import sqsscan
from cloudburst.protocol.serialize import BlobRef
from cloudburst.protocol.task import Columns

from .conftest import wait_until

FN = BlobRef("f" * 64, 10)


class CountingFuture(Future[Any]):
    """A future that counts how often anyone asks whether it was cancelled."""

    asked = 0

    def cancelled(self) -> bool:
        CountingFuture.asked += 1
        return super().cancelled()


def submitted(t: TaskTable, n: int) -> list[Future[Any]]:
    futures: list[Future[Any]] = [CountingFuture() for _ in range(n)]
    for i, future in enumerate(futures):
        t.add_item(abs, FN, (i,), {}, future)
    return futures


def test_a_scaling_step_does_not_look_at_every_item_waiting() -> None:
    t = TaskTable(slots=4, target_task_seconds=1.0)
    submitted(t, 5000)
    t.add_run(abs, FN, Columns((range(3000),)), None)
    CountingFuture.asked = 0
    for _ in range(10):  # the manager's scaling, ten rounds
        assert t.work_left() == 8000
        assert t.busy()
    assert CountingFuture.asked == 0, f"{CountingFuture.asked} futures looked at for ten scaling steps"


def test_a_scaling_step_does_not_look_at_every_item_in_flight() -> None:
    t = TaskTable(slots=1000, target_task_seconds=1.0)
    submitted(t, 2000)
    t.item_seconds[FN.digest] = 0.001  # measured: items share tasks
    planned = t.plan()
    in_flight = sum(len(task) for task, _ in planned)
    assert planned and in_flight == 2000
    CountingFuture.asked = 0
    assert t.work_left() == len(planned)
    assert CountingFuture.asked == 0


def test_counts_follow_cancellation_planning_and_finishing() -> None:
    t = TaskTable(slots=2, target_task_seconds=1.0)
    futures = submitted(t, 10)
    run = t.add_run(abs, FN, Columns((range(5),)), 1)
    assert t.work_left() == 15
    futures[0].cancel()
    futures[9].cancel()
    assert t.work_left() == 13
    planned = t.plan()  # six single-item probes (the backlog), skipping the cancelled first item
    assert [task.items[0].label for task, _ in planned] == [1, 2, 3, 4, 5, 6]
    assert t.work_left() == 13, "planning moves work from pending to in flight, it does not lose any"
    for task, _ in planned:
        task.items[0].future.cancel()
    assert t.work_left() == 7, "tasks whose items are all cancelled are not work"
    run.cancel()
    assert t.work_left() == 2
    for task, _ in planned:
        t.finish(task.task_id)
    assert t.work_left() == 2 and t.busy()
    t.take_pending()
    assert t.work_left() == 0 and not t.busy()
    futures[5].cancel()  # a cancellation noticed after the entry left: counts nothing twice
    assert t.work_left() == 0


def test_a_machine_index_finds_the_tasks_a_worker_took() -> None:
    t = TaskTable(slots=4, target_task_seconds=1.0)
    t.add_run(abs, FN, Columns((range(8),)), 2)
    planned = [task for task, _ in t.plan()]
    a, b, c = planned[:3]
    t.started(a.task_id, "m1.0", 1, "r")
    t.started(b.task_id, "m1.1", 1, "r")
    t.started(c.task_id, "m2", 1, "r")
    assert {task.task_id for task in t.tasks_on("m1")} == {a.task_id, b.task_id}
    assert [task.task_id for task in t.tasks_on("m2")] == [c.task_id]
    parts = t.split(a)
    assert {task.task_id for task in t.tasks_on("m1")} == {b.task_id}, "a split task left the index"
    t.started(parts[0][0].task_id, "m2", 1, "r")
    t.finish(c.task_id)
    assert [task.task_id for task in t.tasks_on("m2")] == [parts[0][0].task_id]
    t.take_tasks()
    assert t.tasks_on("m1") == [] and t.tasks_on("m2") == []


def test_the_launcher_keeps_only_what_cost_needs_of_a_described_task() -> None:
    described = {
        "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/c/abc",
        "lastStatus": "STOPPED",
        "stopCode": "SpotInterruption",
        "cpu": "1024",
        "memory": "2048",
        "capacityProviderName": "FARGATE_SPOT",
        "pullStartedAt": datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc),
        "stoppedAt": datetime(2026, 1, 1, 12, 5, tzinfo=timezone.utc),
        "containers": [{"name": "worker", "exitCode": 143, "reason": "x" * 2000}],
        "attachments": [{"details": [{"name": "subnetId", "value": "subnet-1"}] * 20}],
        "tags": [{"key": "cloudburst", "value": "true"}] * 10,
    }
    kept = cost_record(described)
    assert "containers" not in kept and "attachments" not in kept and "tags" not in kept
    assert kept["stopCode"] == "SpotInterruption" and kept["cpu"] == "1024" and kept["memory"] == "2048"
    assert task_cost(kept, 0.05) == task_cost(described, 0.05) > 0
    assert len(repr(kept)) < len(repr(described)) / 4


def test_a_message_sent_wakes_a_few_waiting_polls_of_the_emulator_not_all() -> None:
    sqsscan.install()
    backend = sqs_backends["123456789012"]["eu-central-2"]
    queue = backend.create_queue("test-scale-wakes")
    threads = [threading.Thread(target=queue.wait_for_messages, args=(60,), daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    lock = queue._messages_lock
    assert wait_until(lambda: len(lock._waiters) == 20, timeout=30)  # type: ignore[attr-defined]
    backend.send_message("test-scale-wakes", "hello")
    woken = 20 - len(lock._waiters)  # type: ignore[attr-defined]
    assert 1 <= woken <= sqsscan.WAKES_PER_MESSAGE, f"one message woke {woken} of 20 waiting polls"
    for _ in range(20):  # let the rest go
        with lock:
            lock.notify()
    for thread in threads:
        thread.join(timeout=30)
    backend.delete_queue("test-scale-wakes")
