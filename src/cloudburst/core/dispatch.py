"""The dispatcher: plan → seal → send, in its own thread, and for every task sent again.

A call that cannot be pickled fails alone: its task's other calls go again as tasks of one.
Sending rides out a short outage of the task queue (``retry.Outage``); once that is given up
on, the tasks' items fail and the session goes on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .packing import Sealer
from .retry import Outage
from .table import Planned
from .work import Task

if TYPE_CHECKING:
    from .session import Job

__all__ = ["Dispatcher"]


class Dispatcher:
    """Sends a session's tasks: the dispatcher thread's loop, and ``send_parts`` for tasks cut up later."""

    def __init__(self, job: Job, sealer: Sealer) -> None:
        self.job = job
        self.sealer = sealer
        self.seconds = 0.0  # client time spent cutting, sealing and sending tasks

    def run(self) -> None:
        """The dispatcher thread: wait for work the table may plan, plan it under the lock, send it outside."""
        job, table = self.job, self.job.table
        while True:
            with job.cond:
                while not job.lifecycle.closed and not table.can_plan():
                    job.cond.wait()
                if job.lifecycle.closed:
                    return
                began = time.perf_counter()
                planned = table.plan()
            self.send(planned, began)
            del planned  # while it waits for more, the dispatcher holds no run or argument of the last batch

    def send(self, planned: Planned, began: float) -> None:
        """Seal planned tasks and send them; ``began`` is when their planning started."""
        try:
            self.send_parts(planned)
        except Exception as exc:  # the queue stayed unreachable or refused them: their items fail, the job goes on
            for task, _ in planned:
                if task.task_id in self.job.table.tasks:
                    self.job.fail_task(task.task_id, exc)
        with self.job.cond:
            self.job.table.sent(len(planned))
            self.job.progress.notify_all()  # for wait_sent: planning does not depend on it
            self.seconds += time.perf_counter() - began

    def send_parts(self, planned: Planned) -> None:
        """Seal tasks already in the table and send them, riding out a short outage of the queue."""
        bodies = [body for body in (self._seal(task, calls) for task, calls in planned) if body is not None]
        if not bodies:
            return
        job = self.job
        outage = Outage(job.backend.is_transient)
        outage.call(lambda: job.resources.tasks.send_batch(bodies), "sending tasks", stop=lambda: job.lifecycle.closed)

    def _seal(self, task: Task, calls: object) -> bytes | None:
        """The sealed message; None if a call could not be pickled (that call fails, the others go alone)."""
        try:
            body = self.sealer.seal(task, calls)
        except Exception:
            self._send_picklable(task, calls)
            return None
        with self.job.cond:
            self.job.stats["tasks"] += 1
        return body

    def _send_picklable(self, task: Task, calls: object) -> None:
        """Fail the calls that cannot be pickled, naming the object; send the others as tasks of one."""
        failures = self.sealer.triage(task, calls)
        job = self.job
        with job.cond:
            singles = job.table.singles(task, (pos for pos in range(len(task)) if pos not in failures))
            job.changed()
        job.finish_items(task, [None] * len(task), failures, only=failures.keys())
        self.send_parts(singles)
