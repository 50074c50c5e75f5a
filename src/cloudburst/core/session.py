"""A session (``Job``) is one executor's run: its key, its resources, and the parts that move its work.

::

    submit / map ─► table.pending ─► Dispatcher: plan (table) ─► seal (packing) ─► send ─► tasks queue
                                                                                             │ workers
    futures / map slots ◄─ finish items ◄─ Collector: open ─► route ◄──────────── results queue
    manager thread: WorkerWatch (exits, blame, scaling) ─► Guards (heartbeat, dead letters, cost)

The table is the only shared state and one lock guards it, with the lifecycle (``core.lifecycle``)
and the parts' own counters; user callbacks and unpickling run outside it. Three Conditions share
that lock, so that a task sent or finished wakes only who waits for that: ``cond`` (the dispatcher,
for work it may plan; every other change), ``progress`` (``wait_sent``, ``wait_idle``) and the
manager's (closing; work arriving while workers are missing). A warm round trip wakes no thread
but the caller's.
Up to three threads: the dispatcher, the manager, and the collector (none when the results queue
is ``Subscribable`` and hands each message over in its own thread, or the policy collects nothing).
What a detached session does differently is its ``DispatchPolicy``.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from ..backends import get_backend
from ..backends.base import Backend, LeaseReporting, Subscribable
from ..config.options import ExecutorOptions
from ..errors import ExecutorShutdownError
from ..protocol.sealing import job_tag
from ..protocol.serialize import Packer, Unpacker
from ..protocol.task import WAKE, Columns, encode
from ..protocol.workerenv import WorkerEnv
from . import scratch
from .collect import Collector
from .dispatch import Dispatcher
from .guards import Guards
from .lifecycle import Lifecycle
from .packing import Sealer
from .policy import ATTACHED, DispatchPolicy
from .retry import Outage
from .table import TaskTable
from .watch import WorkerWatch
from .work import MapRun, Task

__all__ = ["Job"]

log = logging.getLogger("cloudburst")


class Job:
    """One executor session. Created and driven by :class:`cloudburst.Executor`."""

    def __init__(
        self, options: ExecutorOptions, policy_for: Callable[[Backend], DispatchPolicy] = lambda backend: ATTACHED
    ) -> None:
        self.options = options
        self.id = uuid.uuid4().hex
        self.key = secrets.token_bytes(32)
        self.tag = job_tag(self.id)  # sealed into every message: one copied from another job is refused
        self.backend = get_backend(options.backend)(options)
        self.resources = self.backend.open_job(self.id, self.key, self._worker_env())
        self.packer = Packer(self.resources.store, inline_limit=self._inline_limit)
        self._cache_dir = scratch.make("client-")
        self.unpacker = Unpacker(self.resources.store, self._cache_dir)
        self.slots = self.backend.slots
        lock = threading.RLock()
        self.cond = threading.Condition(lock)  # the dispatcher waits on it; any change of state notifies it
        self.progress = threading.Condition(lock)  # tasks sent or finished (see ``changed``)
        self._manager_wake = threading.Condition(lock)
        self._short_of_workers = True  # the manager may start workers when work arrives: wake it then
        self.lifecycle = Lifecycle()
        policy = policy_for(self.backend)
        self.table = TaskTable(self.slots, self.backend.target_task_seconds, policy)
        self.stats = {"tasks": 0, "items": 0, "worker_deaths": 0}
        self.on_items_done: Callable[[int], None] | None = None
        sealer = Sealer(self.key, self.tag, self.packer, options, remember=self.backend.reports_leases)
        self.dispatcher = Dispatcher(self, sealer)
        self.collector = Collector(self)
        self.watch = WorkerWatch(self)
        self.guards = Guards(self)
        self._threads = [
            threading.Thread(target=self.dispatcher.run, name="cloudburst-dispatcher", daemon=True),
            threading.Thread(target=self._manage_loop, name="cloudburst-manager", daemon=True),
        ]
        self._collector_thread = self._connect_collector(policy)
        self._start()

    def _worker_env(self) -> WorkerEnv:
        """What every worker of this job is told, with the user's ``env``."""
        return WorkerEnv(
            job_id=self.id,
            backend=self.backend.import_path(),
            job_key=self.key.hex(),
            lease_seconds=self.backend.lease_seconds,
            inline_limit=self._inline_limit,
            idle_timeout=self.backend.idle_timeout,
            client_timeout=self.backend.client_timeout,
            control_period=self.backend.control_period,
            user_env=dict(self.options.env),
        )

    def _connect_collector(self, policy: DispatchPolicy) -> threading.Thread | None:
        """Hook the collector to the queues; its thread, when the results queue must be read."""
        if self.backend.reports_leases:
            tasks = self.resources.tasks
            if not isinstance(tasks, LeaseReporting):
                raise TypeError(f"backend {self.backend.name!r} says it reports leases, but its task queue cannot")
            tasks.watch_leases(self.collector.on_leased)  # instead of the workers' S notices
        if not policy.collect:
            return None  # the results wait in their queue for a later client
        if isinstance(self.resources.results, Subscribable):
            self.resources.results.subscribe(self.collector.delivered)  # in the queue's own threads
            return None
        thread = threading.Thread(target=self.collector.run, name="cloudburst-collector", daemon=True)
        self._threads.append(thread)
        return thread

    def _start(self) -> None:
        try:
            self.guards.write_control(stopped=False)
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

    @property
    def dispatch_seconds(self) -> float:
        """Client time spent cutting, sealing and sending tasks."""
        return self.dispatcher.seconds

    # ------------------------------------------------------------------ intake
    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        """Queue one call; its future."""
        self.lifecycle.check_accepting()  # before anything is written to the store
        fn_ref = self.packer.function(fn)
        future: Future[Any] = Future()
        with self.cond:
            self.lifecycle.check_accepting()
            self.table.add_item(fn, fn_ref, args, kwargs, future)
            # Nothing else waits and a slot is free: send it from here, sparing the dispatcher's wake-up.
            alone = len(self.table.pending) == 1 and len(self.table.tasks) < self.slots
            planned = self.table.plan() if alone else []
            if not planned:
                self.cond.notify_all()
            self._wake_manager_for_work()
        if planned:
            self.dispatcher.send(planned, time.perf_counter())
        return future

    def map(self, fn: Callable[..., Any], calls: Columns, chunksize: int | None) -> MapRun:
        """Queue a map's calls; its run, whose slots fill as results come back."""
        self.lifecycle.check_accepting()
        fn_ref = self.packer.function(fn)
        with self.cond:
            self.lifecycle.check_accepting()
            run = self.table.add_run(fn, fn_ref, calls, chunksize)
            self.cond.notify_all()
            self._wake_manager_for_work()
        return run

    def _wake_manager_for_work(self) -> None:
        """Work arrived: the manager starts workers for it at once when some are missing. Lock held."""
        if self._short_of_workers:
            self._manager_wake.notify()

    def changed(self) -> None:
        """Wake every waiter: the state changed in a way the hot path's targeted wake-ups do not cover. Lock
        held."""
        self.cond.notify_all()
        self.progress.notify_all()

    # ------------------------------------------------------------------ results
    def finish_items(
        self,
        task: Task,
        values: Sequence[Any],
        errors: dict[int, BaseException],
        only: Iterable[int] | None = None,
    ) -> None:
        """Hand a task's results (or only some positions' errors) to its futures or map slots."""
        done = task.finish(values, errors, only)
        if done and self.on_items_done is not None:
            self.on_items_done(done)

    def fail_task(self, task_id: int, exc: BaseException) -> None:
        """The task's items fail with ``exc`` (a task no longer in flight: only logged)."""
        with self.cond:
            task = self.table.finish(task_id)
            self.changed()
        if task is None:
            log.warning("%s", exc)
            return
        self.finish_items(task, [None] * len(task), dict.fromkeys(range(len(task)), exc))

    def break_(self, exc: BaseException, *, spare_running: bool = False) -> None:
        """The job can no longer run work: fail what waits with ``exc``, and make every later ``submit`` and
        ``map`` raise :class:`BrokenExecutorError` at once, as ProcessPoolExecutor does once broken. With
        ``spare_running``, tasks running on a live worker may still finish."""
        with self.cond:
            self.lifecycle.break_(exc)
            self.changed()
        self._fail_everything(exc, spare_running=spare_running)

    def _fail_everything(self, exc: BaseException, *, spare_running: bool = False) -> None:
        with self.cond:
            keep = self.watch.running_on_live_worker if spare_running else (lambda task: False)
            tasks = self.table.take_tasks(keep)
            pending = self.table.take_pending()
            self.changed()
        for task in tasks:
            self.finish_items(task, [None] * len(task), dict.fromkeys(range(len(task)), exc))
        for entry in pending:
            if isinstance(entry, MapRun):
                left = len(entry.calls) - entry.next_pos
                entry.fill(entry.next_pos, [None] * left, dict.fromkeys(range(left), exc))
            else:
                try:
                    entry.future.set_exception(exc)
                except InvalidStateError:
                    pass

    # ------------------------------------------------------------------ manager
    def _manage_loop(self) -> None:
        """The manager thread: watch the workers, scale, guard; a refusal of the cloud breaks the job."""
        outage = Outage(self.backend.is_transient)
        while True:
            with self.cond:
                self._manager_wake.wait(0.05)
                if self.lifecycle.closed:
                    return
            try:
                self.watch.poll()
                self.watch.scale()
                self.guards.check()
                short = self.resources.launcher.running() < self.backend.workers
                with self.cond:
                    self._short_of_workers = short
                outage.ok()
            except Exception as exc:
                if outage.wait_out(exc, "watching the workers"):
                    continue
                # The cloud refused something the job needs (permissions, a deleted resource) or
                # stayed down: fail the work that is waiting rather than hang; finished results stay.
                self.break_(exc)

    def cost(self) -> float:
        """USD this job has cost so far."""
        return self.backend.cost(self.resources)

    # ------------------------------------------------------------------ ending
    def cancel_pending(self) -> None:
        """Cancel work that has not started: queued items, undispatched map calls, queued tasks."""
        with self.cond:
            pending = self.table.take_pending()
            not_started = [t for t in self.table.tasks.values() if not t.workers]
            self.changed()
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
        """Work waits, or runs for someone who still wants it."""
        with self.cond:
            return self.table.busy()

    def stop_accepting(self) -> None:
        """Shutdown: no new work; what was accepted goes on."""
        with self.cond:
            self.lifecycle.shut_down()

    def wait_idle(self) -> None:
        """Until no work is left (or the job is closed)."""
        with self.cond:
            while not self.lifecycle.closed and self.table.busy():
                self.progress.wait(0.1)

    def close(self, *, keep: bool = False) -> None:
        """Stop the threads and workers and delete the job's data. Idempotent."""
        with self.cond:
            if not self.lifecycle.close():
                return
            self.changed()
            self._manager_wake.notify_all()
        current = threading.current_thread()
        collector = self._collector_thread
        if collector is not None and collector is not current:
            try:  # ends the collector's long poll now; it sees the job closed and returns
                self.resources.results.send_batch([encode(self.key, WAKE, 0, None, job=self.tag)])
            except Exception as exc:
                log.debug("could not wake the collector: %s", exc)
        for thread in self._threads:
            # The collector may sit in a receive until the queues close in close_job: join it after.
            if thread is not current and thread is not collector and thread.is_alive():
                thread.join(timeout=2)
        try:
            if self.table.policy.stop_flag and not self.backend.keeps_workers:
                try:
                    self.guards.write_control(stopped=True)  # workers that miss the stop request retire on this
                except Exception as exc:
                    log.debug("could not write the stop flag: %s", exc)
            self.backend.close_job(self.resources, keep=keep)
            if collector is not None and collector is not current and collector.is_alive():
                collector.join(timeout=0.5)
        finally:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            _LIVE_JOBS.discard(self)
        # Anything still unresolved can no longer finish.
        self._fail_everything(ExecutorShutdownError("the executor was shut down before this work finished"))

    def wait_sent(self) -> None:
        """Until every task is planned and sent (or the job is closed)."""
        with self.cond:
            while (self.table.pending or self.table.unsent) and not self.lifecycle.closed:
                self.progress.wait(0.05)

    def worker_pids(self) -> dict[str, int]:
        """Process ids of every worker started on this machine (for tests and tools)."""
        pids = getattr(self.resources.launcher, "pids", None)
        return pids() if callable(pids) else {}


_LIVE_JOBS: weakref.WeakSet[Job] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for job in list(_LIVE_JOBS):
        try:
            job.close()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_close_all_at_exit)
