"""A Job is one executor session: its key, its resources, and the table of tasks in flight.

::

    submit / map ─► pending (items, map runs)
                       │ dispatcher: chunk (sized from measured item time) ─► pack ─► seal
                       ▼
                    tasks queue ─────────────► workers ────► results queue
                                                                 │ collector: unseal ─► unpack
    futures / map slots ◄──────────────── finish items ◄─────────┘  ─► replay output
    manager: watch workers (poll) ─► attribute deaths to tasks ─► replace workers

Three threads, each a short loop of named steps. A results queue that is
``Subscribable`` hands each message over in its own thread instead, and there
is no collector. The table (``_tasks``) is the only shared state and one
Condition guards it; user callbacks and unpickling run outside it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import secrets
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from ..backends import get_backend
from ..backends.base import LeaseReporting, Message, Subscribable, WorkerExit
from ..config.options import ExecutorOptions
from ..errors import (
    BrokenExecutorError,
    CloudError,
    CostLimitExceeded,
    ExecutorShutdownError,
    ForgedMessagesError,
    PayloadAuthenticationError,
    PicklingError,
    UnpicklingError,
    WorkerDiedError,
)
from ..log import say
from ..protocol.output import replay
from ..protocol.serialize import BlobRef, Packed, Packer, Unpacker, describe, job_tag
from ..protocol.task import (
    CLIENT_MEMORY,
    DIED,
    REJECTED,
    RESULT,
    STARTED,
    WAKE,
    Columns,
    Notice,
    RecentIds,
    ResultMessage,
    TaskMessage,
    encode,
    open_message,
    read_dead_letters,
    seal_control,
    sealed_task_id,
)
from ..protocol.workerenv import WorkerEnv
from ..worker.bootstrap import EXIT_ENVIRONMENT
from . import scratch
from .work import MapRun, SubmitItem, Task, rebuild_exception, span

__all__ = ["Job", "MapRun", "rebuild_exception"]

log = logging.getLogger("cloudburst")
_MAX_STARTUP_FAILURES = 3
#: Messages on one queue that fail their check before the job stops with ForgedMessagesError. None arrive
#: in a healthy job (the queues are the job's own); a few may be stray, twenty are someone at work.
MAX_FORGED_MESSAGES = 20
_MAX_SUPERSEDED = 10_000  # split tasks remembered for blame; their old messages are long gone by then
_MAX_OUTAGE_ROUNDS = 8  # about two minutes of backing off before a cloud outage fails the job
_TRANSIENT_CODES = frozenset(
    {
        "",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "ServerException",
        "RequestTimeout",
        "500",
        "503",
    }
)


def _transient(exc: BaseException) -> bool:
    """An error worth waiting out: throttling, a 5xx, a dropped connection."""
    if isinstance(exc, CloudError):
        return exc.code in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, TimeoutError))


class Job:
    """One executor session. Created and driven by :class:`cloudburst.Executor`."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options
        self.id = uuid.uuid4().hex
        self.key = secrets.token_bytes(32)
        self.tag = job_tag(self.id)  # sealed into every message: one copied from another job is refused
        self.backend = get_backend(options.backend)(options)
        idle, client_timeout = self.backend.idle_timeout, self.backend.client_timeout
        worker_env = WorkerEnv(
            job_id=self.id,
            backend=self.backend.import_path(),
            job_key=self.key.hex(),
            lease_seconds=self.backend.lease_seconds,
            inline_limit=self._inline_limit,
            idle_timeout=idle,
            client_timeout=client_timeout,
            control_period=self.backend.control_period,
            user_env=dict(options.env),
        )
        self.resources = self.backend.open_job(self.id, self.key, worker_env)
        self.packer = Packer(self.resources.store, inline_limit=self._inline_limit)
        self._cache_dir = scratch.make("client-")
        self.unpacker = Unpacker(self.resources.store, self._cache_dir)
        self.slots = self.backend.slots

        self._cond = threading.Condition()
        self._pending: deque[SubmitItem | MapRun] = deque()
        self._tasks: dict[int, Task] = {}
        # Tasks split after a worker death, whose old messages may still be delivered: only the workers that
        # took them are kept (for blaming a later death), and only the newest ones (never the map run).
        self._superseded: OrderedDict[int, list[str]] = OrderedDict()
        self._task_ids = itertools.count(1)
        self._next_index = 0
        self._submitted = 0
        self._item_seconds: dict[str, float] = {}  # function digest -> measured seconds per item
        self._stopping = False
        self._closed = False
        self._accepting = True
        self._startup_failures = 0  # workers in a row that exited before running anything
        self._a_worker_started = False  # once one has, an install failure may be a blip, not the environment
        self._worked: set[str] = set()  # workers (and their machines) that have run a task
        self._broken: BaseException | None = None  # why this job can no longer run work (BrokenProcessPool's role)
        self._exits: dict[str, WorkerExit] = {}
        self._seen = RecentIds(CLIENT_MEMORY)  # message ids handled from the results queue (task.py: contract)
        self._deaths_reported: set[str] = set()  # workers whose death notice was handled: one per worker
        self._forged = {"tasks": 0, "results": 0}  # messages that failed their check, per queue
        self._poll_lock = threading.Lock()
        self.stats = {"tasks": 0, "items": 0, "worker_deaths": 0}
        self.on_items_done: Callable[[int], None] | None = None
        self._heartbeat_period = min(30.0, (client_timeout or 120.0) / 4)
        self._next_heartbeat = 0.0
        self._next_dead_letter_check = time.monotonic() + 15.0
        self.dispatch_seconds = 0.0  # client time spent cutting, sealing and sending tasks
        self._unsent = 0  # tasks planned by the dispatcher and not yet sent
        self._next_cost_check = 0.0
        self._alerted = False
        self._over_budget = False

        self._threads = [
            threading.Thread(target=self._dispatch_loop, name="cloudburst-dispatcher", daemon=True),
            threading.Thread(target=self._manage_loop, name="cloudburst-manager", daemon=True),
        ]
        if self.backend.reports_leases:
            tasks = self.resources.tasks
            if not isinstance(tasks, LeaseReporting):
                raise TypeError(f"backend {self.backend.name!r} says it reports leases, but its task queue cannot")
            tasks.watch_leases(self._on_leased)  # instead of the workers' S notices
        self._collector: threading.Thread | None = None
        if self.backend.detached:
            pass  # a detached job's results wait in its queue for cloudburst.attach
        elif isinstance(self.resources.results, Subscribable):
            self.resources.results.subscribe(self._handle_delivered)  # in the queue's own threads
        else:
            self._collector = threading.Thread(target=self._collect_loop, name="cloudburst-collector", daemon=True)
            self._threads.append(self._collector)
        try:
            self._write_control(stopped=False)
        except BaseException:
            self.backend.close_job(self.resources)  # the store refused: undo what open_job made
            raise
        if self.backend.start_eagerly:
            self.resources.launcher.start(self.backend.workers)
        for thread in self._threads:
            thread.start()
        _LIVE_JOBS.add(self)

    @property
    def _inline_limit(self) -> int:
        return max(4096, self.backend.max_message_bytes - 4096)

    # ------------------------------------------------------------------ intake
    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        self._check_accepting()  # before anything is written to the store
        fn_ref = self.packer.function(fn)
        future: Future[Any] = Future()
        with self._cond:
            self._check_accepting()
            item = SubmitItem(fn, fn_ref, args, kwargs, future, self._next_index, self._submitted)
            self._next_index += 1
            self._submitted += 1
            self._pending.append(item)
            # Nothing else waits and a slot is free: send it from here, sparing the dispatcher's wake-up.
            planned = self._plan_tasks() if len(self._pending) == 1 and len(self._tasks) < self.slots else []
            if not planned:
                self._cond.notify_all()
        if planned:
            self._send(planned, time.perf_counter())
        return future

    def map(self, fn: Callable[..., Any], calls: Columns, chunksize: int | None) -> MapRun:
        self._check_accepting()
        fn_ref = self.packer.function(fn)
        with self._cond:
            self._check_accepting()
            run = MapRun(fn, fn_ref, calls, self._next_index, chunksize)
            self._next_index += len(calls)
            if calls:
                self._pending.append(run)
                self._cond.notify_all()
        return run

    def _check_accepting(self) -> None:
        cause = self._broken
        if cause is not None:
            first_line = (str(cause).splitlines() or [type(cause).__name__])[0].rstrip(".")
            raise BrokenExecutorError(
                f"this executor can no longer run work ({type(cause).__name__}: {first_line}); "
                "create a new Executor once the cause is fixed",
                cause,
            )
        if not self._accepting:
            raise ExecutorShutdownError("cannot schedule new work after shutdown; create a new Executor")

    # ------------------------------------------------------------------ dispatcher
    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._can_plan():
                    self._cond.wait()
                if self._stopping:
                    return
                began = time.perf_counter()
                planned = self._plan_tasks()
            self._send(planned, began)
            del planned  # while it waits for more, the dispatcher holds no run or argument of the last batch

    def _send(self, planned: list[tuple[Task, list[Any]]], began: float) -> None:
        """Seal planned tasks and send them; ``began`` is when their planning started."""
        bodies = [body for body in (self._seal(task, calls) for task, calls in planned) if body is not None]
        try:
            self._send_bodies(bodies)
        except Exception as exc:  # the queue stayed unreachable or refused them: their items fail, the job goes on
            for task, _ in planned:
                if task.task_id in self._tasks:
                    self._fail_task(task.task_id, exc)
        with self._cond:
            self._unsent -= len(planned)
            self._cond.notify_all()
            self.dispatch_seconds += time.perf_counter() - began

    def _send_bodies(self, bodies: list[bytes]) -> None:
        """Send task messages, riding out a short outage of the queue."""
        for attempt in itertools.count():
            if not bodies or self._stopping:
                return
            try:
                self.resources.tasks.send_batch(bodies)
                return
            except Exception as exc:
                if not _transient(exc) or attempt + 1 >= _MAX_OUTAGE_ROUNDS:
                    raise
                log.warning("cloudburst: sending tasks failed (%s); trying again", exc)
                time.sleep(min(30.0, 0.5 * 2**attempt))

    def _backlog_limit(self) -> int:
        if self.backend.detached:
            return 1 << 30  # everything goes to the queue: the client may leave
        return 2 * self.slots + 2

    def _chunk_size(self, fn_ref: BlobRef, remaining: int) -> int:
        """Items per task: about ``target_task_seconds`` of work, at least a quarter of that (so the
        queue's per-task cost stays small), and smaller as work runs out, so every slot gets a share."""
        per_item = self._item_seconds.get(fn_ref.digest)
        if per_item is None:
            if self.backend.detached:
                return max(1, math.ceil(remaining / (4 * self.slots)))  # no time to measure
            return 1  # nothing measured yet: small probes until the first results come back
        target = self.backend.target_task_seconds
        by_time = target / max(per_item, 1e-7)
        by_balance = math.ceil(remaining / (2 * self.slots))
        return max(1, min(int(by_time), max(by_balance, int(by_time / 4)), 1_000_000))

    def _probing(self, head: MapRun | SubmitItem) -> bool:
        """A map whose item time is unknown has one probe per slot in flight, no more. Lock held."""
        if not isinstance(head, MapRun) or head.fn_ref.digest in self._item_seconds or self.backend.detached:
            return False
        return sum(1 for t in self._tasks.values() if t.run is head) >= self.slots

    def _can_plan(self) -> bool:
        return bool(self._pending) and len(self._tasks) < self._backlog_limit() and not self._probing(self._pending[0])

    def _plan_tasks(self) -> list[tuple[Task, list[Any]]]:
        """Cut pending work into tasks, up to the backlog limit. Called with the lock held."""
        planned: list[tuple[Task, list[Any]]] = []
        while self._can_plan():
            head = self._pending[0]
            if isinstance(head, MapRun):
                if head.cancelled:
                    self._pending.popleft()
                    continue
                remaining = len(head.calls) - head.next_pos
                size = head.chunksize or self._chunk_size(head.fn_ref, remaining)
                start = head.next_pos
                stop = min(len(head.calls), start + size)
                head.next_pos = stop
                if stop >= len(head.calls):
                    self._pending.popleft()
                indices = range(head.base_index + start, head.base_index + stop)
                task = Task(next(self._task_ids), head.fn_ref, indices, run=head, start=start)
                calls: Any = head.calls.slice(start, stop)
            else:
                items = self._take_submitted(head.fn_ref)
                if not items:
                    continue
                task = Task(next(self._task_ids), head.fn_ref, [i.index for i in items], items=items)
                calls = [(i.args, i.kwargs) for i in items]
            self._tasks[task.task_id] = task
            planned.append((task, calls))
        self._unsent += len(planned)  # until _send has sent them (detach waits for that)
        return planned

    def _take_submitted(self, fn_ref: BlobRef) -> list[SubmitItem]:
        """Consecutive submitted items of one function, skipping cancelled ones."""
        same = 0
        for entry in self._pending:
            if not isinstance(entry, SubmitItem) or entry.fn_ref != fn_ref:
                break
            same += 1
        size = self._chunk_size(fn_ref, same)
        items: list[SubmitItem] = []
        while self._pending and len(items) < size:
            entry = self._pending[0]
            if not isinstance(entry, SubmitItem) or entry.fn_ref != fn_ref:
                break
            self._pending.popleft()
            if not entry.future.cancelled():
                items.append(entry)
        return items

    def _seal(self, task: Task, calls: list[Any]) -> bytes | None:
        """Pickle a task's calls and seal the message; a call that cannot be pickled fails alone."""
        with_kwargs = task.run is None
        try:
            packed = self._pack_calls(calls, task)
        except Exception:
            self._resend_picklable(task, calls)
            return None
        message = TaskMessage(
            task.task_id,
            task.fn_ref,
            packed,
            task.labels,
            with_kwargs=with_kwargs,
            seed=self.options.seed,
            max_attempts=self.options.retries + 1,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        with self._cond:
            self.stats["tasks"] += 1
        return encode(self.key, b"T", task.task_id, message, job=self.tag)

    def _pack_calls(self, calls: Any, task: Task | None = None) -> Packed:
        if isinstance(calls, Columns):
            if all(map(_only_scalars, calls.cols)):
                return self.packer.pack(calls)  # nothing large can repeat: skip the sharing scan
            return self.packer.pack(calls, shared=self.packer.shared_arguments([(c, None) for c in calls], task))
        if calls and isinstance(calls[0], tuple) and len(calls[0]) == 2 and isinstance(calls[0][1], dict):
            shared = self.packer.shared_arguments(calls, task)  # submitted: (args, kwargs)
        else:
            shared = self.packer.shared_arguments([(c, None) for c in calls], task)
        return self.packer.pack(calls, shared=shared)

    def _resend_picklable(self, task: Task, calls: list[Any]) -> None:
        """Fail the calls that cannot be pickled, naming the object; send the others as new tasks."""
        failures: dict[int, BaseException] = {}
        replacements: list[tuple[Task, list[Any]]] = []
        for pos, call in enumerate(calls):
            one = calls.slice(pos, pos + 1) if isinstance(calls, Columns) else [call]
            try:
                self._pack_calls(one)
            except Exception as exc:
                values = call if task.run is not None else (*call[0], *call[1].values())
                culprit = next((v for v in values if not _picklable(v)), None)
                what = describe(culprit) if culprit is not None else "an argument"
                error = PicklingError(
                    f"item {task.labels[pos]}: cannot send {what} to a worker: {type(exc).__name__}: {exc}. "
                    "Pass plain data, or create the object inside the function."
                )
                error.__cause__ = exc
                failures[pos] = error
                continue
            index = task.indices[pos]
            if task.run is not None:
                single = Task(
                    next(self._task_ids), task.fn_ref, range(index, index + 1), run=task.run, start=task.start + pos
                )
            else:
                single = Task(next(self._task_ids), task.fn_ref, [index], items=[task.items[pos]])
            replacements.append((single, one))
        with self._cond:
            self._tasks.pop(task.task_id, None)
            for single, _ in replacements:
                self._tasks[single.task_id] = single
            self._cond.notify_all()
        self._finish_items(task, [None] * len(calls), failures, only=failures.keys())
        bodies = [body for body in (self._seal(t, c) for t, c in replacements) if body is not None]
        self._send_bodies(bodies)

    # ------------------------------------------------------------------ collector
    def _collect_loop(self) -> None:
        results = self.resources.results
        failures = 0
        while not self._stopping:
            try:
                messages = results.receive(10, wait=self.backend.result_wait)
                for message in messages:
                    self._handle(message.body)
                if messages:
                    results.ack([m.receipt for m in messages])
                failures = 0
            except Exception as exc:
                if self._stopping:
                    return  # the queues were deleted under a receive or an ack: the job is over
                failures += 1
                if not _transient(exc) or failures >= _MAX_OUTAGE_ROUNDS:
                    self._break(exc)  # results can no longer arrive: say so rather than hang
                    return
                log.warning("cloudburst: reading results failed (%s); trying again", exc)
                time.sleep(min(30.0, 0.5 * 2**failures))

    def _handle_delivered(self, body: bytes) -> None:
        """A message the results queue handed over: like the collector, quiet once the job is closing."""
        try:
            self._handle(body)
        except Exception:
            if not self._stopping:
                raise

    def _handle(self, body: bytes) -> None:
        """Route one message from the results queue: each message id once; one that fails its check
        is counted against the queue and never read."""
        try:
            opened = open_message(self.key, body, job=self.tag)
        except PayloadAuthenticationError as exc:
            self._on_forged("results", f"a {exc}")
            return
        if not self._seen.add(opened.message_id):
            log.debug("cloudburst: dropped a copy of a message handled already (a duplicate delivery or a replay)")
            return
        kind, message = opened.kind, opened.message
        if kind == RESULT and isinstance(message, ResultMessage):
            self._on_result(message)
        elif kind == STARTED and isinstance(message, Notice):
            self._on_started(message)
        elif kind == DIED and isinstance(message, WorkerExit):
            self._on_died(message)
        elif kind == REJECTED and isinstance(message, Notice):
            self._on_forged("tasks", f"worker {message.worker_id} refused a message: {message.detail}")
        elif kind != WAKE:
            self._on_forged("results", f"a sealed message of kind {kind!r} does not belong on the results queue")

    def _on_died(self, exit_: WorkerExit) -> None:
        """A supervisor's notice that one of its worker processes died; a worker dies once, so a copy of
        the notice (replayed, or from beyond the id memory) changes nothing."""
        with self._cond:
            if exit_.worker_id in self._deaths_reported:
                return
            self._deaths_reported.add(exit_.worker_id)
        self._on_worker_exit(exit_)

    def _on_forged(self, queue: str, detail: str) -> None:
        """A message on ``queue`` failed its check. It names no task (its word cannot be trusted), so no
        task is failed or sent again for it; past ``MAX_FORGED_MESSAGES`` on one queue the job stops."""
        with self._cond:
            self._forged[queue] += 1
            count = self._forged[queue]
        if count > MAX_FORGED_MESSAGES:
            log.debug("cloudburst: %s", detail)
            return
        say(
            f"a message on the job's {queue} queue failed its check and was dropped unread ({detail}); "
            f"{count} so far, the job stops at {MAX_FORGED_MESSAGES}"
        )
        if count < MAX_FORGED_MESSAGES:
            return
        named = getattr(self.resources.tasks if queue == "tasks" else self.resources.results, "url", None)
        error = ForgedMessagesError(
            f"{count} messages on this job's {queue} queue{f' ({named})' if named else ''} failed their authenticity "
            "check (forged, tampered with, copied from another job, or from another cloudburst version); they were "
            "dropped unread, but something that can write to the queue keeps sending them, so the job was stopped: "
            "its workers were stopped and the remaining work cancelled; finished results are kept. Find out what "
            "can write to that queue (the job's own workers run your code and its dependencies), then run the work "
            "again in a new Executor.",
            queue=queue,
            count=count,
        )
        # Not from this thread: it may be the local queue's, which a stopping worker's last send waits on.
        threading.Thread(target=self._stop_workers, name="cloudburst-stopper", daemon=True).start()
        self._break(error)

    def _stop_workers(self) -> None:
        try:
            self.resources.launcher.stop()
        except Exception as exc:
            log.warning("cloudburst: could not stop the workers: %s", exc)

    @staticmethod
    def _calls_of(task: Task) -> Any:
        if task.run is not None:
            return task.run.calls.slice(task.start, task.start + len(task))
        return [(i.args, i.kwargs) for i in task.items]

    def _on_leased(self, worker_id: str, messages: Sequence[Message]) -> None:
        """The task queue gave tasks to a worker: what an S notice would say, before the worker runs them."""
        # Checked here: a forged message names no task (the worker will refuse it, and say so).
        task_ids = tuple(-1 if (t := sealed_task_id(self.key, m.body, job=self.tag)) is None else t for m in messages)
        attempts = tuple(m.receive_count for m in messages)
        self._on_started(Notice(task_ids, worker_id, attempts, receipts=tuple(m.receipt for m in messages)))

    def _on_started(self, notice: Notice) -> None:
        worker = notice.worker_id
        with self._cond:
            tasks: list[Task] = []
            receipts = notice.receipts or ("",) * len(notice.task_ids)
            for task_id, attempt, receipt in zip(notice.task_ids, notice.attempts, receipts, strict=True):
                task = self._tasks.get(task_id)
                if task is not None and attempt <= task.attempt:
                    continue  # a notice older than one handled (a replay, or it came late): not news
                if task is not None:
                    task.workers.append(worker)
                    task.attempt = attempt
                    task.receipt = receipt
                    tasks.append(task)
                elif task_id in self._superseded:
                    self._superseded[task_id].append(worker)
            self._startup_failures = 0
            self._a_worker_started = True
            self._worked.update(_machine_and_worker(worker))
            # Notices may come in either order: a worker whose death was handled first has lost these
            # tasks already, and nothing else will send them again before their leases run out.
            death = self._exits.get(worker) or self._exits.get(_machine_of(worker))
        for task in tasks:
            for item in task.items:
                if not item.future.running() and not item.future.done():
                    item.future.set_running_or_notify_cancel()
        if death is not None:
            self._tasks_lost(tasks, death)

    def _on_result(self, result: ResultMessage) -> None:
        with self._cond:
            task = self._tasks.pop(result.task_id, None)
            if task is not None and result.failure is None and len(task):
                seconds = result.compute_seconds / len(task)
                old = self._item_seconds.get(task.fn_ref.digest)
                self._item_seconds[task.fn_ref.digest] = seconds if old is None else 0.5 * (old + seconds)
            self._cond.notify_all()
        if task is None:
            return  # a duplicate delivery: the first result won
        if result.events:
            replay(result.events)
        if result.split:
            self._resend_in_parts(task)
            return
        where = f"item {{index}} on worker {result.worker_id}"
        if result.failure is not None:
            exc = rebuild_exception(result.failure, where=f"task {task.task_id} on worker {result.worker_id}")
            if isinstance(exc, WorkerDiedError):
                exc = self._died_error(task, exc)
            self._finish_items(task, [None] * len(task), dict.fromkeys(range(len(task)), exc))
            return
        try:
            values = self.unpacker.unpack(result.values) if result.values is not None else [None] * len(task)
        except Exception as exc:
            if len(task) > 1:
                self._resend_in_parts(task)  # run again in parts, so only the culprit fails
                return
            error = UnpicklingError(
                f"the result of item {span(task.labels)} came back but could not be unpickled here: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            self._finish_items(task, [None], {0: error})
            return
        errors = {
            pos: rebuild_exception(err, where=where.format(index=task.labels[pos]))
            for pos, err in result.errors.items()
        }
        self._finish_items(task, values, errors)  # type: ignore[arg-type]

    def _resend_in_parts(self, task: Task) -> None:
        """Send a task's calls again in smaller tasks (a finished task: its message is gone)."""
        with self._cond:
            parts = self._split(task)
            for sub, _ in parts:
                self._tasks[sub.task_id] = sub
        bodies = [body for body in (self._seal(t, c) for t, c in parts) if body is not None]
        self._send_bodies(bodies)

    def _died_error(self, task: Task, fallback: WorkerDiedError) -> WorkerDiedError:
        # The worker that gave up saw the last death before this process reaped it: wait for it.
        expected = fallback.attempts
        deadline = time.monotonic() + 2.0
        while True:
            self._poll_workers()
            with self._cond:
                deaths = [self._exits[w] for w in task.workers if w in self._exits]
            if len(deaths) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not deaths:
            return fallback
        last = deaths[-1]
        tail = _interesting_tail(last.log_tail)
        message = (
            f"item{'s' if len(task) > 1 else ''} {span(task.labels)}: the worker running "
            f"{'them' if len(task) > 1 else 'it'} died {len(deaths)} time(s); last: worker {last.worker_id}, "
            f"{last.reason}. Retries exhausted (retries={self.options.retries})."
        )
        if tail:
            message += f"\nLast worker output:\n{tail}"
        return WorkerDiedError(message, exit_code=last.exit_code, reason=last.reason, attempts=len(deaths))

    def _fail_task(self, task_id: int | None, exc: BaseException) -> None:
        with self._cond:
            task = self._tasks.pop(task_id, None) if task_id is not None else None
            self._cond.notify_all()
        if task is None:
            log.warning("cloudburst: %s", exc)
            return
        self._finish_items(task, [None] * len(task), dict.fromkeys(range(len(task)), exc))

    def _finish_items(
        self,
        task: Task,
        values: Sequence[Any],
        errors: dict[int, BaseException],
        only: Any = None,
    ) -> None:
        if task.run is not None:
            if only is not None:
                for pos in only:
                    task.run.fill(task.start + pos, [None], {0: errors[pos]})
            else:
                task.run.fill(task.start, values, errors)
        else:
            positions = range(len(task.items)) if only is None else only
            for pos in positions:
                future = task.items[pos].future
                try:
                    if pos in errors:
                        future.set_exception(errors[pos])
                    else:
                        future.set_result(values[pos])
                except InvalidStateError:
                    pass  # cancelled meanwhile
            if self.on_items_done is not None:
                self.on_items_done(len(positions))

    # ------------------------------------------------------------------ manager
    def _manage_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait(0.05)
                if self._stopping:
                    return
            try:
                self._poll_workers()
                self._scale()
                self._heartbeat()
                self._check_dead_letters()
                self._check_cost()
                failures = 0
            except Exception as exc:
                failures += 1
                if _transient(exc) and failures < _MAX_OUTAGE_ROUNDS:
                    log.warning("cloudburst: %s; trying again", exc)
                    time.sleep(min(30.0, 0.5 * 2**failures))
                    continue
                # The cloud refused something the job needs (permissions, a deleted resource) or
                # stayed down: fail the work that is waiting rather than hang; finished results stay.
                self._break(exc)
                failures = 0

    def _check_cost(self) -> None:
        """Warn once past cost_alert_threshold; at max_cost_per_job stop everything, keep what finished."""
        limit, alert = self.backend.cost_limits
        now = time.monotonic()
        if not (limit or alert) or now < self._next_cost_check:
            return
        self._next_cost_check = now + 1.0
        cost = self.backend.cost(self.resources)
        if alert and cost >= alert and not self._alerted:
            self._alerted = True
            say(f"cloudburst: this job has cost ${cost:.2f}, past cost_alert_threshold=${alert:g}")
        # What is running now bills at least another minute: stop before that would pass the limit.
        projected = cost + self.backend.hourly_cost(self.resources.launcher.running()) / 60
        if limit and projected >= limit and not self._over_budget:
            self._over_budget = True
            self.resources.launcher.stop()
            exc = CostLimitExceeded(
                f"the job reached max_cost_per_job=${limit:g} (${cost:.2f} spent, ${projected:.2f} with what was "
                "running): its workers were stopped and the remaining work cancelled; finished results are kept",
                cost=cost,
                limit=limit,
            )
            say(str(exc))
            self._break(exc)

    def cost(self) -> float:
        """USD this job has cost so far."""
        return self.backend.cost(self.resources)

    def _write_control(self, *, stopped: bool) -> None:
        state: dict[str, object] = {"heartbeat": time.time(), "stopped": stopped}
        self.resources.store.put("control/state", seal_control(self.key, "state", state, job=self.tag))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self._heartbeat_period
            self._write_control(stopped=False)

    def _check_dead_letters(self) -> None:
        """Tasks the queue gave up on (delivered too often, every worker died): fail them.

        A sealed message can be copied into the dead-letter queue by anyone who can write there, so one
        fails its task only when its deliveries are used up and its task is neither done nor running on a
        live worker. One whose worker's death is not known here yet is looked at again later.
        """
        queue = self.resources.dead_letters
        if queue is None or self.backend.detached or time.monotonic() < self._next_dead_letter_check:
            return
        self._next_dead_letter_check = time.monotonic() + 15.0
        handled = []
        for letter in read_dead_letters(self.key, queue, job=self.tag):
            task_id, deliveries = letter.task.task_id, letter.deliveries
            with self._cond:
                task = self._tasks.get(task_id)
                running = task is not None and self._running_on_live_worker(task)
            if task is not None and running and deliveries > self.resources.dead_letter_after:
                continue  # its worker may have died unseen so far: look again in a while
            handled.append(letter.receipt)
            if task is None or running or deliveries <= self.resources.dead_letter_after:
                log.warning(
                    "cloudburst: ignored a copy of task %d in the dead-letter queue (%d deliveries; the task is %s)",
                    task_id,
                    deliveries,
                    "done" if task is None else "running" if running else "within its deliveries",
                )
                continue
            self._fail_task(
                task_id,
                WorkerDiedError(
                    f"items {span(letter.task.indices)}: the task was delivered {deliveries} times and its "
                    "worker vanished each time; the queue moved it to the dead-letter queue",
                    attempts=deliveries,
                ),
            )
        if handled:
            queue.ack(handled)

    def _poll_workers(self) -> None:
        with self._poll_lock:
            exits = self.resources.launcher.poll()
            for exit_ in exits:
                self._on_worker_exit(exit_)

    def _on_worker_exit(self, exit_: WorkerExit) -> None:
        """A worker (or a worker process inside a machine) exited: blame, resend, count, replace."""
        dead = exit_.worker_id
        with self._cond:
            for worker in {w for t in self._tasks.values() for w in t.workers if _machine_of(w) == dead}:
                self._exits.setdefault(worker, exit_)
            self._exits[dead] = exit_
            victims = [t for t in self._tasks.values() if t.workers and dead in _machine_and_worker(t.workers[-1])]
            if exit_.exit_code != 0:
                self.stats["worker_deaths"] += 1
                # Only a worker that never got going counts toward "cannot start": one that connected, or ran
                # tasks, and then died idle (killed, or its machine reclaimed) says nothing about the workers'
                # environment.
                if dead not in self._worked and not victims and not exit_.interrupted and not exit_.got_ready:
                    self._startup_failures += 1
                    if exit_.exit_code == EXIT_ENVIRONMENT and not self._a_worker_started:  # all would fail so
                        self._startup_failures = max(self._startup_failures, _MAX_STARTUP_FAILURES)
            startup_failures = self._startup_failures
            replaced = bool(self._pending or self._tasks) and not self._stopping and self._broken is None
        self._tasks_lost(victims, exit_)
        if exit_.exit_code == 0 and not victims:
            return  # retired cleanly (idle, or the job ended): not a crash
        if victims:
            say(f"worker {dead} died ({exit_.reason}) while running item(s) {_spans(victims)}; {self._fate(victims)}")
        elif replaced and startup_failures < _MAX_STARTUP_FAILURES:
            say(f"worker {dead} stopped ({exit_.reason}); starting another in its place")
        if startup_failures >= _MAX_STARTUP_FAILURES:
            tail = "\n".join(exit_.log_tail.strip().splitlines()[-10:])
            if exit_.exit_code == EXIT_ENVIRONMENT:
                what = "the workers' environment could not be installed; no more workers are started ("
            else:
                what = f"workers keep failing before they run anything ({startup_failures} in a row, "
            error = WorkerDiedError(
                f"{what}last: {exit_.reason}).\nLast worker output:\n{tail}",
                exit_code=exit_.exit_code,
                reason=exit_.reason,
            )
            self._break(error, spare_running=True)  # work running on a healthy worker goes on

    def _fate(self, victims: list[Task]) -> str:
        """What happens next to tasks whose worker died, said truthfully."""
        if self._broken is not None:
            return "no more workers are started, so they fail"
        if all(len(t) > 1 for t in victims):
            return "their items run again in smaller tasks, so only an item that kills its worker uses up retries"
        retries = self.options.retries
        if all(t.attempt > retries for t in victims if len(t) == 1):
            return f"no retries left (retries={retries}), so the item fails"
        return f"running it again (retries={retries})"

    def _tasks_lost(self, victims: list[Task], exit_: WorkerExit) -> None:
        """Tasks whose worker died: send multi-item ones again in parts, release the leases of the rest.

        One of a chunk's items killed the worker, or the worker died under it: the chunk is cancelled and
        its items sent again in smaller tasks, so that only an item that kills its worker on its own uses up
        its retries and fails. Once the job is broken no worker will run them, so they fail instead.
        """
        if not victims:
            return
        if self._broken is not None:
            for task in victims:
                self._fail_task(task.task_id, self._broken)
            return
        split: list[tuple[Task, list[Any]]] = []
        with self._cond:
            receipts = [t.receipt for t in victims if t.receipt and t.task_id in self._tasks]
            for task in victims:
                if len(task) > 1 and self._tasks.pop(task.task_id, None) is not None:
                    self._superseded[task.task_id] = list(task.workers)
                    while len(self._superseded) > _MAX_SUPERSEDED:
                        self._superseded.popitem(last=False)
                    for sub, calls in self._split(task):
                        self._tasks[sub.task_id] = sub
                        split.append((sub, calls))
        for task in victims:
            if task.task_id in self._superseded:  # before its message can be delivered again
                name = f"cancelled/{task.task_id}"
                self.resources.store.put(f"control/{name}", seal_control(self.key, name, {}, job=self.tag))
        if receipts:
            try:
                self.resources.tasks.extend(receipts, 0)  # deliver them again now, not when the lease ends
            except Exception as exc:
                log.debug("cloudburst: could not release the leases of worker %s: %s", exit_.worker_id, exc)
        if split:
            self._send_bodies([body for body in (self._seal(t, c) for t, c in split) if body is not None])

    def _split(self, task: Task) -> list[tuple[Task, list[Any]]]:
        """Cut a task into up to 16 smaller ones. Called with the lock held."""
        size = math.ceil(len(task) / min(len(task), 16))
        parts: list[tuple[Task, list[Any]]] = []
        for offset in range(0, len(task), size):
            stop = min(len(task), offset + size)
            if task.run is not None:
                sub = Task(
                    next(self._task_ids),
                    task.fn_ref,
                    task.indices[offset:stop],
                    run=task.run,
                    start=task.start + offset,
                )
            else:
                items = task.items[offset:stop]
                sub = Task(next(self._task_ids), task.fn_ref, [i.index for i in items], items=items)
            parts.append((sub, self._calls_of(sub)))
        return parts

    def _running_on_live_worker(self, task: Task) -> bool:
        """Lock held."""
        if not task.workers:
            return False
        worker = task.workers[-1]
        return worker not in self._exits and _machine_of(worker) not in self._exits

    def _scale(self) -> None:
        """Start workers as work arrives: no more than the tasks waiting or running could keep busy (each
        pending item may become a task of its own), and never more than ``workers``."""
        launcher = self.resources.launcher
        with self._cond:
            if self._broken is not None or self._stopping:
                return
            work = len(self._live_tasks()) + sum(_items_left(entry) for entry in self._pending)
            wanted = min(self.backend.workers, math.ceil(work / self.backend.tasks_per_worker))
        missing = wanted - launcher.running()
        if missing > 0:
            launcher.start(missing)

    def _break(self, exc: BaseException, *, spare_running: bool = False) -> None:
        """The job can no longer run work: fail what waits with ``exc``, and make every later ``submit`` and
        ``map`` raise :class:`BrokenExecutorError` at once, as ProcessPoolExecutor does once broken. With
        ``spare_running``, tasks running on a live worker may still finish."""
        with self._cond:
            if self._broken is None:
                self._broken = exc
            self._cond.notify_all()
        self._fail_everything(exc, spare_running=spare_running)

    def _fail_everything(self, exc: BaseException, *, spare_running: bool = False) -> None:
        with self._cond:
            if spare_running:
                tasks = [t for t in self._tasks.values() if not self._running_on_live_worker(t)]
                for task in tasks:
                    del self._tasks[task.task_id]
            else:
                tasks = list(self._tasks.values())
                self._tasks.clear()
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for task in tasks:
            self._finish_items(task, [None] * len(task), dict.fromkeys(range(len(task)), exc))
        for entry in pending:
            if isinstance(entry, MapRun):
                start = entry.next_pos
                entry.fill(
                    start, [None] * (len(entry.calls) - start), dict.fromkeys(range(len(entry.calls) - start), exc)
                )
            else:
                try:
                    entry.future.set_exception(exc)
                except InvalidStateError:
                    pass

    # ------------------------------------------------------------------ ending
    def cancel_pending(self) -> None:
        """Cancel work that has not started: queued items, undispatched map calls, queued tasks."""
        with self._cond:
            pending = list(self._pending)
            self._pending.clear()
            not_started = [t for t in self._tasks.values() if not t.workers]
            self._cond.notify_all()
        for entry in pending:
            if isinstance(entry, MapRun):
                entry.cancel()
            else:
                entry.future.cancel()
        for task in not_started:
            if task.run is not None:
                task.run.cancel()
            for item in task.items:
                item.future.cancel()

    def busy(self) -> bool:
        with self._cond:
            return bool(self._pending or self._live_tasks())

    def _live_tasks(self) -> list[Task]:
        return [
            t
            for t in self._tasks.values()
            if not (t.run is not None and t.run.cancelled)
            and not (t.items and all(i.future.cancelled() for i in t.items))
        ]

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def wait_idle(self) -> None:
        with self._cond:
            while not self._stopping and (self._pending or self._live_tasks()):
                self._cond.wait(0.1)

    def close(self, *, keep: bool = False) -> None:
        """Stop the threads and workers and delete the job's data. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        current = threading.current_thread()
        collector = self._collector
        if collector is not None and collector is not current:
            try:  # ends the collector's long poll now; it sees _stopping and returns
                self.resources.results.send_batch([encode(self.key, WAKE, 0, None, job=self.tag)])
            except Exception as exc:
                log.debug("cloudburst: could not wake the collector: %s", exc)
        for thread in self._threads:
            # The collector may sit in a receive until the queues close in close_job: join it after.
            if thread is not current and thread is not collector and thread.is_alive():
                thread.join(timeout=2)
        try:
            if not (self.backend.detached or self.backend.keeps_workers):
                try:
                    self._write_control(stopped=True)  # workers that miss the stop request retire on this
                except Exception as exc:
                    log.debug("cloudburst: could not write the stop flag: %s", exc)
            self.backend.close_job(self.resources, keep=keep)
            if collector is not None and collector is not current and collector.is_alive():
                collector.join(timeout=0.5)
        finally:
            import shutil

            shutil.rmtree(self._cache_dir, ignore_errors=True)
            _LIVE_JOBS.discard(self)
        # Anything still unresolved can no longer finish.
        self._fail_everything(ExecutorShutdownError("the executor was shut down before this work finished"))

    def detach(self) -> dict[str, Any]:
        """Send every task, start the workers, and return what :func:`cloudburst.attach` needs later."""
        with self._cond:
            while (self._pending or self._unsent) and not self._stopping:
                self._cond.wait(0.05)
            tasks = {str(t.task_id): _indices(t.indices) for t in self._tasks.values()}
            wanted = min(self.backend.workers, math.ceil(len(tasks) / self.backend.tasks_per_worker))
        launcher = self.resources.launcher  # the manager starts them; wait until it has
        deadline = time.monotonic() + 120
        while launcher.running() < wanted and time.monotonic() < deadline:
            time.sleep(0.1)
        return {
            "job_id": self.id,
            "backend": self.options.backend,
            "created": time.time(),
            "items": self._next_index,
            "tasks": tasks,
            **self.backend.job_record(self.resources),
        }

    def worker_pids(self) -> dict[str, int]:
        """Process ids of every worker started on this machine (for tests and tools)."""
        pids = getattr(self.resources.launcher, "pids", None)
        return pids() if callable(pids) else {}


def _items_left(entry: SubmitItem | MapRun) -> int:
    """Items of a pending entry not yet cut into tasks (a cancelled one has none)."""
    if isinstance(entry, MapRun):
        return 0 if entry.cancelled else len(entry.calls) - entry.next_pos
    return 0 if entry.future.cancelled() else 1


def _machine_of(worker_id: str) -> str:
    """The machine a worker process runs in: ``abc`` for ``abc.2`` (a child of a multi-CPU worker)."""
    return worker_id.split(".", 1)[0]


def _machine_and_worker(worker_id: str) -> set[str]:
    return {worker_id, _machine_of(worker_id)}


def _spans(tasks: Sequence[Task]) -> str:
    return ", ".join(span(t.labels) for t in tasks)


def _indices(indices: Sequence[int]) -> list[int]:
    """A task's item indices for a job record: ``[start, stop]`` for a range, else the list."""
    if isinstance(indices, range):
        return [indices.start, indices.stop]
    return [-1, *indices]


def _interesting_tail(log_tail: str) -> str:
    """The part of a dead worker's output worth showing: a crash dump from its start, else the last lines."""
    lines = log_tail.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Fatal Python error"):
            return "\n".join(lines[i : i + 12])
    return "\n".join(lines[-5:])


_NUMBERS = frozenset({int, float, bool, type(None), complex})


def _only_scalars(column: Sequence[Any]) -> bool:
    """True when a column holds only numbers or short strings: nothing worth sharing (checked at C speed)."""
    if isinstance(column, range):
        return True
    kinds = set(map(type, column))
    if kinds <= _NUMBERS:
        return True
    if not kinds <= _NUMBERS | {str, bytes}:
        return False
    return max((len(v) for v in column if type(v) in (str, bytes)), default=0) < 1000


def _picklable(value: object) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(value, protocol=5)
        return True
    except Exception:
        return False


_LIVE_JOBS: weakref.WeakSet[Job] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for job in list(_LIVE_JOBS):
        try:
            job.close()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_close_all_at_exit)
