"""The task table on its own: no processes, no queues, no threads.

Chunk sizes as item time is measured, one probe per slot, the backlog limit, splitting that
keeps item indices and labels, cancelled work skipped, and (hypothesis) every item planned
exactly once whatever mix of planning, splitting and finishing.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudburst.core.policy import ATTACHED, DispatchPolicy
from cloudburst.core.table import MAX_PARTS, TaskTable, calls_of
from cloudburst.core.work import MapRun, Task
from cloudburst.protocol.blobs import BlobRef
from cloudburst.protocol.task import Columns

FN = BlobRef("f" * 64, 10)
OTHER_FN = BlobRef("e" * 64, 10)


def table(slots: int = 2, target: float = 1.0, policy: DispatchPolicy = ATTACHED) -> TaskTable:
    return TaskTable(slots, target, policy)


def add_map(t: TaskTable, n: int, chunksize: int | None = None, fn: BlobRef = FN) -> MapRun:
    return t.add_run(abs, fn, Columns((range(n),)), chunksize)


def add_items(t: TaskTable, n: int, fn: BlobRef = FN) -> list[Future[Any]]:
    futures: list[Future[Any]] = [Future() for _ in range(n)]
    for i, future in enumerate(futures):
        t.add_item(abs, fn, (i,), {}, future)
    return futures


def measure(t: TaskTable, seconds_per_item: float) -> None:
    """Finish every task in flight as if each item took ``seconds_per_item``."""
    for task_id, task in list(t.tasks.items()):
        t.finish(task_id, seconds_per_item * len(task))


# ---------------------------------------------------------------------------- chunk sizes


def test_an_unmeasured_map_sends_one_single_item_probe_per_slot() -> None:
    t = table(slots=3)
    add_map(t, 1000)
    planned = t.plan()
    assert [len(task) for task, _ in planned] == [1, 1, 1]
    assert not t.can_plan(), "a fourth probe went out before any result came back"
    assert t.unsent == 3


def test_chunks_grow_to_the_target_time_once_item_time_is_measured() -> None:
    t = table(slots=2, target=1.0)
    add_map(t, 100_000)
    t.plan()
    measure(t, 0.01)  # 10 ms an item: 100 items make a one-second task
    sizes = [len(task) for task, _ in t.plan()]
    assert sizes and all(size == 100 for size in sizes)
    assert len(t.tasks) == t.backlog_limit() == 2 * 2 + 2


def test_measured_time_is_averaged_with_what_was_measured_before() -> None:
    t = table()
    add_map(t, 10)
    t.plan()
    first, second = list(t.tasks)
    t.finish(first, 0.4)
    t.finish(second, 0.2)
    assert math.isclose(t.item_seconds[FN.digest], 0.3)


def test_chunks_shrink_as_the_work_runs_out_so_every_slot_gets_a_share() -> None:
    t = table(slots=4, target=1.0)
    t.item_seconds[FN.digest] = 0.001  # 1,000 items make a one-second task
    assert t.chunk_size(FN, 80_000) == 1000  # plenty left: sized by time
    assert t.chunk_size(FN, 4_000) == 500  # running out: two tasks per slot
    assert t.chunk_size(FN, 800) == 250  # but never below a quarter of the target time


def test_a_failed_result_is_not_a_measurement() -> None:
    t = table()
    add_map(t, 10)
    (task, _), *_ = t.plan()
    t.finish(task.task_id, None)
    assert FN.digest not in t.item_seconds


def test_an_explicit_chunksize_is_kept_probe_included() -> None:
    t = table(slots=1)
    add_map(t, 10, chunksize=4)
    assert [len(task) for task, _ in t.plan()] == [4]  # one probe per slot until a result is in
    measure(t, 1.0)  # a second an item: time alone would say one item a task
    assert [len(task) for task, _ in t.plan()] == [4, 2]


def test_submitted_items_of_one_function_share_a_task_once_measured() -> None:
    t = table(slots=1)
    add_items(t, 3)
    assert [len(task) for task, _ in t.plan()] == [1, 1, 1]  # nothing measured: one each
    t2 = table(slots=1)
    t2.item_seconds[FN.digest] = 0.01
    add_items(t2, 3)
    add_items(t2, 2, fn=OTHER_FN)
    planned = t2.plan()
    assert [(task.fn_ref, len(task)) for task, _ in planned] == [(FN, 3), (OTHER_FN, 1), (OTHER_FN, 1)]
    assert calls_of(planned[0][0]) == [((0,), {}), ((1,), {}), ((2,), {})]


def test_a_detached_policy_cuts_everything_at_once_without_probes() -> None:
    t = table(slots=2, policy=DispatchPolicy(backlog=1 << 30, measure=False))
    add_map(t, 1000)
    planned = t.plan()
    assert sum(len(task) for task, _ in planned) == 1000
    sizes = [len(task) for task, _ in planned]
    assert sizes[0] == 1000 // 8  # four tasks per slot of what remains, recut as it shrinks
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert not t.pending


# ---------------------------------------------------------------------------- cancelled and finished work


def test_cancelled_runs_and_items_are_skipped() -> None:
    t = table(slots=4)
    run = add_map(t, 100)
    run.cancel()
    futures = add_items(t, 3)
    futures[1].cancel()
    planned = t.plan()
    assert [task.indices for task, _ in planned] == [[100], [102]]
    assert not t.pending


def test_a_cancelled_run_in_flight_is_not_live_work() -> None:
    t = table(slots=2)
    run = add_map(t, 100)
    t.plan()
    assert t.busy() and t.work_left() == 2 + 98
    run.cancel()
    assert t.live_tasks() == [] and t.work_left() == 0
    measure(t, 0.001)  # its probes come back: the rest of the run is dropped, not planned
    assert t.plan() == [] and not t.busy()


def test_a_duplicate_result_finds_nothing() -> None:
    t = table()
    add_map(t, 1)
    (task, _), *_ = t.plan()
    assert t.finish(task.task_id, 0.1) is task
    assert t.finish(task.task_id, 0.1) is None


def test_started_takes_news_only() -> None:
    t = table()
    add_map(t, 1)
    (task, _), *_ = t.plan()
    assert t.started(task.task_id, "w1", 1, "r1") is task
    assert t.started(task.task_id, "w1", 1, "r1") is None  # the same notice again
    assert t.started(task.task_id, "w2", 2, "r2") is task
    assert task.workers == ["w1", "w2"] and task.receipt == "r2"


# ---------------------------------------------------------------------------- splitting


def test_split_keeps_indices_labels_and_calls() -> None:
    t = table(slots=8)
    t.add_run(abs, FN, Columns((range(5),)), 1)  # a first run: the second's indices start at 5
    run = add_map(t, 48, chunksize=48)
    t.plan()
    (task,) = [task for task in t.tasks.values() if task.run is run]
    parts = t.split(task)
    assert task.task_id not in t.tasks and all(sub.task_id in t.tasks for sub, _ in parts)
    assert len(parts) == MAX_PARTS
    assert [i for sub, _ in parts for i in sub.indices] == list(range(5, 53))
    assert [i for sub, _ in parts for i in sub.labels] == list(range(48))
    assert [c for _, calls in parts for c in calls] == [(i,) for i in range(48)]


def test_split_of_submitted_items_keeps_their_futures_and_labels() -> None:
    t = table(slots=1)
    t.item_seconds[FN.digest] = 0.001
    futures = add_items(t, 5)
    ((task, _),) = t.plan()
    parts = t.split(task)
    assert [sub.items[0].future for sub, _ in parts] == futures
    assert [list(sub.labels) for sub, _ in parts] == [[i] for i in range(5)]


def test_supersede_remembers_who_took_a_task_and_forgets_old_ones() -> None:
    t = table()
    add_map(t, 4, chunksize=2)
    (task, _), _ = t.plan()
    t.started(task.task_id, "w1", 1, "r")
    assert t.supersede(task) and not t.supersede(task)
    assert t.superseded[task.task_id] == ["w1"]
    t.started(task.task_id, "w2", 2, "r2")  # its old message went to another worker: blame it too
    assert t.superseded[task.task_id] == ["w1", "w2"]


def test_singles_keeps_only_the_positions_asked_for() -> None:
    t = table()
    add_map(t, 6, chunksize=6)
    ((task, _),) = t.plan()
    singles = t.singles(task, [0, 2, 5])
    assert [list(sub.indices) for sub, _ in singles] == [[0], [2], [5]]
    assert set(t.tasks) == {sub.task_id for sub, _ in singles}


# ---------------------------------------------------------------------------- every item exactly once


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    submits=st.integers(0, 8),
    slots=st.integers(1, 4),
    steps=st.lists(st.sampled_from(["plan", "finish", "split", "measure"]), max_size=40),
)
def test_every_item_is_finished_exactly_once(sizes: list[int], submits: int, slots: int, steps: list[str]) -> None:
    t = table(slots=slots)
    for n in sizes:
        add_map(t, n)
    add_items(t, submits)
    total = sum(sizes) + submits
    finished: list[int] = []

    def finish_one(task: Task) -> None:
        assert t.finish(task.task_id, 0.001 * len(task)) is task
        finished.extend(task.indices)

    for step in steps:
        in_flight = list(t.tasks.values())
        if step == "plan":
            t.plan()
        elif step == "finish" and in_flight:
            finish_one(in_flight[0])
        elif step == "split" and in_flight and len(in_flight[-1]) > 1:
            t.split(in_flight[-1])
        elif step == "measure":
            t.item_seconds[FN.digest] = 0.01
    while t.pending or t.tasks:  # drain what is left
        t.plan()
        for task in list(t.tasks.values()):
            finish_one(task)
    assert sorted(finished) == list(range(total))
