"""The task table: work waiting, tasks in flight, and the chunk-size policy. Pure: no threads, no I/O.

::

    add_item / add_run ─► pending ─► plan() ─► tasks (in flight) ─► finish() / forget()
                                                  │ split() after a worker death or an unpicklable result
                                                  └─► smaller tasks (the old id is remembered: superseded)

The session guards the table with its one lock; every method here expects that lock held.
Nothing here looks at every item or every task on a periodic call: running counts (items pending,
tasks per run, tasks per machine) are kept as work is added, planned, cancelled and finished, so the
manager's scaling step costs the same with ten items waiting or a million.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from ..protocol.blobs import BlobRef
from ..protocol.task import Columns
from .policy import ATTACHED, DispatchPolicy
from .work import MapRun, SubmitItem, Task

__all__ = ["Planned", "TaskTable", "calls_of", "items_left", "machine_of"]

#: split tasks remembered for blame; their old messages are long gone by then
MAX_SUPERSEDED = 10_000
#: a task cut after a worker death becomes at most this many parts
MAX_PARTS = 16

Planned = list[tuple[Task, Any]]  # tasks with their calls: a Columns slice, or (args, kwargs) pairs


class TaskTable:
    """Pending work, tasks in flight, measured item times. ``slots``: tasks that run at once."""

    def __init__(self, slots: int, target_task_seconds: float, policy: DispatchPolicy = ATTACHED) -> None:
        self.slots = slots
        self.target_task_seconds = target_task_seconds
        self.policy = policy
        self.pending: deque[SubmitItem | MapRun] = deque()
        self.tasks: dict[int, Task] = {}
        # Tasks split after a worker death, whose old messages may still be delivered: only the workers that
        # took them are kept (for blaming a later death), and only the newest ones (never the map run).
        self.superseded: OrderedDict[int, list[str]] = OrderedDict()
        self._task_ids = itertools.count(1)
        self.next_index = 0  # item indices are unique in the session
        self._submitted = 0
        self.item_seconds: dict[str, float] = {}  # function digest -> measured seconds per item
        self.unsent = 0  # tasks planned and not yet sent
        # Running counts, so that scaling and probing are O(1) (see the module's docstring).
        self._pending_items = 0  # submitted items pending and not known to be cancelled
        self._pending_runs: dict[MapRun, None] = {}  # map runs in ``pending`` (an ordered set)
        self._run_tasks: dict[MapRun, int] = {}  # map run -> its tasks in flight
        self._unwanted: set[int] = set()  # tasks in flight whose submitted items are all cancelled
        self._by_machine: defaultdict[str, set[int]] = defaultdict(set)  # machine -> tasks it took, in flight
        # Submitted items cancelled by their caller, from any thread (deque.append needs no lock); the
        # next count drains them under the session's lock.
        self._cancelled: deque[int] = deque()  # their indices: a callback holds no item's arguments
        self._item_task: dict[int, int] = {}  # item index -> its task in flight (0: pending; absent: gone)

    # ------------------------------------------------------------------ intake
    def add_item(
        self,
        fn: Callable[..., Any],
        fn_ref: BlobRef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Future[Any],
    ) -> SubmitItem:
        """Queue one submitted call."""
        item = SubmitItem(fn, fn_ref, args, kwargs, future, self.next_index, self._submitted)
        self.next_index += 1
        self._submitted += 1
        self.pending.append(item)
        self._pending_items += 1
        self._item_task[item.index] = 0
        future.add_done_callback(functools.partial(_count_if_cancelled, self._cancelled, item.index))
        return item

    def add_run(self, fn: Callable[..., Any], fn_ref: BlobRef, calls: Columns, chunksize: int | None) -> MapRun:
        """Queue one map call (an empty one is done at once)."""
        run = MapRun(fn, fn_ref, calls, self.next_index, chunksize)
        self.next_index += len(calls)
        if calls:
            self.pending.append(run)
            self._pending_runs[run] = None
        return run

    # ------------------------------------------------------------------ planning
    def backlog_limit(self) -> int:
        """Tasks in flight at most: enough to keep every slot busy while results travel."""
        return self.policy.backlog if self.policy.backlog is not None else 2 * self.slots + 2

    def chunk_size(self, fn_ref: BlobRef, remaining: int) -> int:
        """Items per task: about ``target_task_seconds`` of work, at least a quarter of that (so the
        queue's per-task cost stays small), and smaller as work runs out, so every slot gets a share."""
        per_item = self.item_seconds.get(fn_ref.digest)
        if per_item is None:
            if not self.policy.measure:
                return max(1, math.ceil(remaining / (4 * self.slots)))  # no time to measure
            return 1  # nothing measured yet: small probes until the first results come back
        by_time = self.target_task_seconds / max(per_item, 1e-7)
        by_balance = math.ceil(remaining / (2 * self.slots))
        return max(1, min(int(by_time), max(by_balance, int(by_time / 4)), 1_000_000))

    def probing(self, head: MapRun | SubmitItem) -> bool:
        """A map whose item time is unknown has one probe per slot in flight, no more."""
        if not isinstance(head, MapRun) or head.fn_ref.digest in self.item_seconds or not self.policy.measure:
            return False
        return self._run_tasks.get(head, 0) >= self.slots

    def can_plan(self) -> bool:
        """Work waits, the backlog has room, and no probe holds it back."""
        return bool(self.pending) and len(self.tasks) < self.backlog_limit() and not self.probing(self.pending[0])

    def plan(self) -> Planned:
        """Cut pending work into tasks, up to the backlog limit; they count as unsent until ``sent``."""
        planned: Planned = []
        while self.can_plan():
            head = self.pending[0]
            if isinstance(head, MapRun):
                if head.cancelled:
                    self._pop_run()
                    continue
                size = head.chunksize or self.chunk_size(head.fn_ref, len(head.calls) - head.next_pos)
                start, stop = head.next_pos, min(len(head.calls), head.next_pos + size)
                head.next_pos = stop
                if stop >= len(head.calls):
                    self._pop_run()
                task = self._new_task(head.fn_ref, range(head.base_index + start, head.base_index + stop), run=head)
                task.start = start
            else:
                items = self._take_submitted(head.fn_ref)
                if not items:
                    continue
                task = self._new_task(head.fn_ref, [i.index for i in items], items=items)
            planned.append((task, calls_of(task)))
        self.unsent += len(planned)
        return planned

    def _pop_run(self) -> None:
        run = self.pending.popleft()
        if isinstance(run, MapRun):
            self._pending_runs.pop(run, None)

    def sent(self, count: int) -> None:
        """``count`` planned tasks were sent (or failed to be)."""
        self.unsent -= count

    def _take_submitted(self, fn_ref: BlobRef) -> list[SubmitItem]:
        """Consecutive submitted items of one function, skipping cancelled ones."""
        same = 0
        for entry in self.pending:
            if not isinstance(entry, SubmitItem) or entry.fn_ref != fn_ref:
                break
            same += 1
        size = self.chunk_size(fn_ref, same)
        items: list[SubmitItem] = []
        while self.pending and len(items) < size:
            entry = self.pending[0]
            if not isinstance(entry, SubmitItem) or entry.fn_ref != fn_ref:
                break
            self.pending.popleft()
            if self._item_task.get(entry.index) == 0:  # not yet counted out as cancelled
                self._pending_items -= 1
                self._item_task.pop(entry.index)
            if not entry.future.cancelled():
                items.append(entry)
        return items

    def _new_task(
        self,
        fn_ref: BlobRef,
        indices: Sequence[int],
        *,
        run: MapRun | None = None,
        items: list[SubmitItem] | None = None,
    ) -> Task:
        task = Task(next(self._task_ids), fn_ref, indices, run=run, items=items or [])
        self.tasks[task.task_id] = task
        if run is not None:
            self._run_tasks[run] = self._run_tasks.get(run, 0) + 1
        for item in task.items:
            self._item_task[item.index] = task.task_id
        if task.items and all(i.future.cancelled() for i in task.items):
            self._unwanted.add(task.task_id)
        return task

    def _drop(self, task_id: int) -> Task | None:
        """Take a task out of flight, and out of every count it is in."""
        task = self.tasks.pop(task_id, None)
        if task is None:
            return None
        self._unwanted.discard(task_id)
        if task.run is not None:
            left = self._run_tasks.pop(task.run) - 1
            if left:
                self._run_tasks[task.run] = left
        for item in task.items:
            if self._item_task.get(item.index) == task_id:
                del self._item_task[item.index]
        for machine in {machine_of(w) for w in task.workers}:
            on_machine = self._by_machine.get(machine)
            if on_machine is not None:
                on_machine.discard(task_id)
                if not on_machine:
                    del self._by_machine[machine]
        return task

    # ------------------------------------------------------------------ cutting tasks up
    def part(self, task: Task, offset: int, stop: int) -> Task:
        """A new task in flight for items ``offset:stop`` of ``task`` (same run or items, same labels)."""
        if task.run is not None:
            sub = self._new_task(task.fn_ref, task.indices[offset:stop], run=task.run)
            sub.start = task.start + offset
            return sub
        items = task.items[offset:stop]
        return self._new_task(task.fn_ref, [i.index for i in items], items=items)

    def split(self, task: Task) -> Planned:
        """Replace ``task`` by up to ``MAX_PARTS`` smaller tasks in flight, with their calls."""
        self._drop(task.task_id)
        size = math.ceil(len(task) / min(len(task), MAX_PARTS))
        parts = [self.part(task, offset, min(len(task), offset + size)) for offset in range(0, len(task), size)]
        return [(sub, calls_of(sub)) for sub in parts]

    def singles(self, task: Task, positions: Iterable[int]) -> Planned:
        """Replace ``task`` by one task per position listed (the others are dropped), with their calls."""
        self._drop(task.task_id)
        parts = [self.part(task, pos, pos + 1) for pos in positions]
        return [(sub, calls_of(sub)) for sub in parts]

    def supersede(self, task: Task) -> bool:
        """Take a task whose message may still be delivered out of flight, remembering who took it; False if
        it was not in flight."""
        if self._drop(task.task_id) is None:
            return False
        self.superseded[task.task_id] = list(task.workers)
        while len(self.superseded) > MAX_SUPERSEDED:
            self.superseded.popitem(last=False)
        return True

    # ------------------------------------------------------------------ progress
    def started(self, task_id: int, worker: str, attempt: int, receipt: str) -> Task | None:
        """A worker took a task: the task if this is news (not an older or repeated notice), else None."""
        task = self.tasks.get(task_id)
        if task is None:
            if task_id in self.superseded:
                self.superseded[task_id].append(worker)
            return None
        if attempt <= task.attempt:
            return None  # a notice older than one handled (a replay, or it came late)
        task.workers.append(worker)
        self._by_machine[machine_of(worker)].add(task_id)
        task.attempt = attempt
        task.receipt = receipt
        return task

    def finish(self, task_id: int, compute_seconds: float | None = None) -> Task | None:
        """Take a task out of flight (None: not in flight, e.g. a duplicate result); ``compute_seconds`` is
        how long its items took, which sizes the function's later chunks."""
        task = self._drop(task_id)
        if task is not None and compute_seconds is not None and len(task):
            seconds = compute_seconds / len(task)
            old = self.item_seconds.get(task.fn_ref.digest)
            self.item_seconds[task.fn_ref.digest] = seconds if old is None else 0.5 * (old + seconds)
        return task

    def tasks_on(self, machine: str) -> list[Task]:
        """Tasks in flight that a worker on ``machine`` (or the worker ``machine`` itself) has taken."""
        return [self.tasks[task_id] for task_id in self._by_machine.get(machine, ())]

    def _note_cancelled(self) -> None:
        """Count out the submitted items cancelled since the last count: O(items cancelled)."""
        while self._cancelled:
            index = self._cancelled.popleft()
            task_id = self._item_task.get(index)
            if task_id == 0:  # still pending: the planner will skip it
                self._pending_items -= 1
                del self._item_task[index]
            elif task_id is not None and all(i.future.cancelled() for i in self.tasks[task_id].items):
                self._unwanted.add(task_id)

    def live_count(self) -> int:
        """Tasks in flight whose results someone still wants: O(map runs in flight)."""
        self._note_cancelled()
        dead = sum(count for run, count in self._run_tasks.items() if run.cancelled)
        return len(self.tasks) - len(self._unwanted) - dead

    def live_tasks(self) -> list[Task]:
        """Tasks in flight whose results someone still wants."""
        self._note_cancelled()
        return [
            t
            for t in self.tasks.values()
            if not (t.run is not None and t.run.cancelled) and t.task_id not in self._unwanted
        ]

    def busy(self) -> bool:
        """Work waits or is wanted from a worker."""
        return bool(self.pending) or self.live_count() > 0

    def work_left(self) -> int:
        """Tasks in flight plus pending items: what workers could be kept busy with. O(map runs), not O(items)."""
        self._note_cancelled()
        return self.live_count() + self._pending_items + sum(items_left(run) for run in self._pending_runs)

    def take_pending(self) -> list[SubmitItem | MapRun]:
        """Every pending entry, removed."""
        pending = list(self.pending)
        self.pending.clear()
        self._pending_runs.clear()
        self._pending_items = 0
        for entry in pending:
            if isinstance(entry, SubmitItem):
                self._item_task.pop(entry.index, None)
        return pending

    def take_tasks(self, keep: Callable[[Task], bool] = lambda task: False) -> list[Task]:
        """Every task in flight that ``keep`` does not keep, removed."""
        taken = [t for t in self.tasks.values() if not keep(t)]
        for task in taken:
            self._drop(task.task_id)
        return taken


def calls_of(task: Task) -> Any:
    """A task's calls: its slice of the run's columns, or its items' ``(args, kwargs)``."""
    if task.run is not None:
        return task.run.calls.slice(task.start, task.start + len(task))
    return [(i.args, i.kwargs) for i in task.items]


def _count_if_cancelled(cancelled: deque[int], index: int, future: Future[Any]) -> None:
    """A submitted item's done-callback: note its index if it was cancelled (any thread, no lock)."""
    if future.cancelled():
        cancelled.append(index)


def machine_of(worker_id: str) -> str:
    """The machine a worker process runs in: ``abc`` for ``abc.2`` (a child of a multi-CPU worker)."""
    return worker_id.split(".", 1)[0]


def items_left(entry: SubmitItem | MapRun) -> int:
    """Items of a pending entry not yet cut into tasks (a cancelled one has none)."""
    if isinstance(entry, MapRun):
        return 0 if entry.cancelled else len(entry.calls) - entry.next_pos
    return 0 if entry.future.cancelled() else 1
