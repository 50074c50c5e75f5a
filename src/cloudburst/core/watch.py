"""The worker watch: which workers stopped, which tasks that cost, and how many workers to keep.

A worker that dies takes the tasks it held with it: a chunk goes again in smaller parts (so
only an item that kills its worker on its own uses up retries), a single item goes again
until its retries are spent. Workers that die before running anything, several in a row,
mean none can start: the session breaks with the last one's output. Worker ids may name a
process inside a machine, ``abc.2``: a machine's death is each of its processes' death.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..backends.base import WorkerExit
from ..errors import WorkerDiedError
from ..log import say
from ..protocol.exitcodes import EXIT_ENVIRONMENT
from .table import machine_of
from .work import Task, span

if TYPE_CHECKING:
    from .session import Job

__all__ = ["MAX_STARTUP_FAILURES", "WorkerWatch"]

log = logging.getLogger("cloudburst")
#: workers in a row that stop before running anything, after which no more are started
MAX_STARTUP_FAILURES = 3
#: exits whose output is kept (for error messages); older ones keep their exit code and reason only
MAX_TAILS = 256
#: workers whose death notice is remembered, so that a copy of one changes nothing
MAX_DEATHS_REMEMBERED = 10_000


class WorkerWatch:
    """Exits, blame, start-up failures and scaling for one session. State is guarded by the session's lock."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.exits: dict[str, WorkerExit] = {}
        self.startup_failures = 0  # workers in a row that exited before running anything
        self._a_worker_started = False  # once one has, an install failure may be a blip, not the environment
        # Workers (and their machines) that have run a task and have not exited yet.
        self._worked: set[str] = set()
        # Workers whose death notice was handled (one per worker), newest last, at most MAX_DEATHS_REMEMBERED.
        self._deaths_reported: OrderedDict[str, None] = OrderedDict()
        self._tails: deque[str] = deque()  # workers whose exit in ``exits`` still holds its output, oldest first
        self._poll_lock = threading.Lock()

    # ------------------------------------------------------------------ news of workers
    def poll(self) -> None:
        """Ask the launcher which workers stopped, and handle each."""
        with self._poll_lock:
            for exit_ in self.job.resources.launcher.poll():
                self.on_exit(exit_)

    def on_died(self, exit_: WorkerExit) -> None:
        """A supervisor's notice that one of its worker processes died; a worker dies once, so a copy of
        the notice (replayed, or from beyond the id memory) changes nothing."""
        with self.job.cond:
            if exit_.worker_id in self._deaths_reported:
                return
            self._deaths_reported[exit_.worker_id] = None
            if len(self._deaths_reported) > MAX_DEATHS_REMEMBERED:
                self._deaths_reported.popitem(last=False)
        self.on_exit(exit_)

    def worker_started(self, worker: str) -> WorkerExit | None:
        """A worker took tasks: workers can start. Its death if that was handled already. Lock held."""
        self.startup_failures = 0
        self._a_worker_started = True
        self._worked.update(_machine_and_worker(worker))
        # Notices may come in either order: a worker whose death was handled first has lost its tasks
        # already, and nothing else will send them again before their leases run out.
        return self.exits.get(worker) or self.exits.get(machine_of(worker))

    def on_exit(self, exit_: WorkerExit) -> None:
        """A worker (or a worker process inside a machine) exited: blame, resend, count, replace."""
        job, dead = self.job, exit_.worker_id
        with job.cond:
            # Only the tasks this machine took (an index kept by the table), not every task in flight.
            tasks = job.table.tasks_on(machine_of(dead))
            for worker in {w for t in tasks for w in t.workers if machine_of(w) == dead}:
                self.exits.setdefault(worker, exit_)
            self._remember(exit_)
            victims = [t for t in tasks if t.workers and dead in _machine_and_worker(t.workers[-1])]
            self._count_failure(exit_, victims)
            self._worked.discard(dead)  # a worker exits once: it will not be asked about again
            startup_failures = self.startup_failures
            replaced = bool(job.table.pending or job.table.tasks) and job.lifecycle.working
        self.tasks_lost(victims, exit_)
        if exit_.exit_code == 0 and not victims:
            return  # retired cleanly (idle, or the job ended): not a crash
        if victims:
            say(f"worker {dead} died ({exit_.reason}) while running item(s) {_spans(victims)}; {self._fate(victims)}")
        elif replaced and startup_failures < MAX_STARTUP_FAILURES:
            say(f"worker {dead} stopped ({exit_.reason}); starting another in its place")
        if startup_failures >= MAX_STARTUP_FAILURES:
            job.break_(_cannot_start(exit_, startup_failures), spare_running=True)  # running work goes on

    def _remember(self, exit_: WorkerExit) -> None:
        """Keep a worker's exit; only the newest ``MAX_TAILS`` keep their output, so that memory does not
        grow with every worker ever started. Lock held."""
        self.exits[exit_.worker_id] = exit_
        if not exit_.log_tail:
            return
        self._tails.append(exit_.worker_id)
        while len(self._tails) > MAX_TAILS:
            old = self._tails.popleft()
            if old in self.exits:
                self.exits[old] = dataclasses.replace(self.exits[old], log_tail="")

    def _count_failure(self, exit_: WorkerExit, victims: list[Task]) -> None:
        """Count a crash; only a worker that never got going counts toward "cannot start". Lock held."""
        if exit_.exit_code == 0:
            return
        self.job.stats["worker_deaths"] += 1
        # One that connected, or ran tasks, and then died idle (killed, or its machine reclaimed) says
        # nothing about the workers' environment.
        if exit_.worker_id in self._worked or victims or exit_.interrupted or exit_.got_ready:
            return
        self.startup_failures += 1
        if exit_.exit_code == EXIT_ENVIRONMENT and not self._a_worker_started:  # all would fail so
            self.startup_failures = max(self.startup_failures, MAX_STARTUP_FAILURES)

    def _fate(self, victims: list[Task]) -> str:
        """What happens next to tasks whose worker died, said truthfully."""
        if self.job.lifecycle.cause is not None:
            return "no more workers are started, so they fail"
        if all(len(t) > 1 for t in victims):
            return "their items run again in smaller tasks, so only an item that kills its worker uses up retries"
        retries = self.job.options.retries
        if all(t.attempt > retries for t in victims if len(t) == 1):
            return f"no retries left (retries={retries}), so the item fails"
        return f"running it again (retries={retries})"

    # ------------------------------------------------------------------ what a death costs
    def tasks_lost(self, victims: list[Task], exit_: WorkerExit) -> None:
        """Tasks whose worker died: send multi-item ones again in parts, release the leases of the rest.

        One of a chunk's items killed the worker, or the worker died under it: the chunk is cancelled and
        its items sent again in smaller tasks, so that only an item that kills its worker on its own uses up
        its retries and fails. Once the job is broken no worker will run them, so they fail instead.
        """
        job = self.job
        if not victims:
            return
        cause = job.lifecycle.cause
        if cause is not None:
            for task in victims:
                job.fail_task(task.task_id, cause)
            return
        split = []
        with job.cond:
            receipts = [t.receipt for t in victims if t.receipt and t.task_id in job.table.tasks]
            for task in victims:
                if len(task) > 1 and job.table.supersede(task):
                    split.extend(job.table.split(task))
        for task in victims:
            if task.task_id in job.table.superseded:  # before its message can be delivered again
                job.guards.write_cancelled(task.task_id)
        if receipts:
            try:
                job.resources.tasks.extend(receipts, 0)  # deliver them again now, not when the lease ends
            except Exception as exc:
                log.debug("could not release the leases of worker %s: %s", exit_.worker_id, exc)
        job.dispatcher.send_parts(split)

    def running_on_live_worker(self, task: Task) -> bool:
        """The worker that took the task last is not known to have stopped. Lock held."""
        if not task.workers:
            return False
        worker = task.workers[-1]
        return worker not in self.exits and machine_of(worker) not in self.exits

    def died_error(self, task: Task, fallback: WorkerDiedError) -> WorkerDiedError:
        """The error for a task whose retries went on worker deaths, naming the last one and its output."""
        # The worker that gave up saw the last death before this process reaped it: wait for it.
        expected = fallback.attempts
        deadline = time.monotonic() + 2.0
        while True:
            self.poll()
            with self.job.cond:
                deaths = [self.exits[w] for w in task.workers if w in self.exits]
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
            f"{last.reason}. Retries exhausted (retries={self.job.options.retries})."
        )
        if tail:
            message += f"\nLast worker output:\n{tail}"
        return WorkerDiedError(message, exit_code=last.exit_code, reason=last.reason, attempts=len(deaths))

    # ------------------------------------------------------------------ how many workers
    def scale(self) -> None:
        """Start workers as work arrives: no more than the tasks waiting or running could keep busy (each
        pending item may become a task of its own), and never more than ``workers``."""
        job = self.job
        launcher = job.resources.launcher
        with job.cond:
            if not job.lifecycle.working:
                return
            wanted = min(job.backend.workers, math.ceil(job.table.work_left() / job.backend.tasks_per_worker))
        missing = wanted - launcher.running()
        if missing > 0:
            launcher.start(missing)

    def stop_workers(self) -> None:
        """Stop every worker (the session broke); a failure is only logged."""
        try:
            self.job.resources.launcher.stop()
        except Exception as exc:
            log.warning("could not stop the workers: %s", exc)


def _cannot_start(exit_: WorkerExit, startup_failures: int) -> WorkerDiedError:
    """Why no more workers are started, with the last one's output."""
    tail = "\n".join(exit_.log_tail.strip().splitlines()[-10:])
    if exit_.exit_code == EXIT_ENVIRONMENT:
        what = "the workers' environment could not be installed; no more workers are started ("
    else:
        what = f"workers keep failing before they run anything ({startup_failures} in a row, "
    return WorkerDiedError(
        f"{what}last: {exit_.reason}).\nLast worker output:\n{tail}", exit_code=exit_.exit_code, reason=exit_.reason
    )


def _machine_and_worker(worker_id: str) -> set[str]:
    return {worker_id, machine_of(worker_id)}


def _spans(tasks: Sequence[Task]) -> str:
    return ", ".join(span(t.labels) for t in tasks)


def _interesting_tail(log_tail: str) -> str:
    """The part of a dead worker's output worth showing: a crash dump from its start, else the last lines."""
    lines = log_tail.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Fatal Python error"):
            return "\n".join(lines[i : i + 12])
    return "\n".join(lines[-5:])
