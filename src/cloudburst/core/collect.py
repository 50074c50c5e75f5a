"""The collector: every message on the results queue, authenticated, once, routed by kind.

::

    receive (or a Subscribable queue's hand-over) ─► open_message: sealed with the job's key and tag?
        no ─► counted against its queue (ForgedMessagesError past MAX_FORGED_MESSAGES), never read
        yes, seen before ─► dropped (a duplicate delivery or a replay)
        R result ─► finish its items / send it again in parts / unpickling triage
        S started ─► the task's worker, for blame     D died ─► the worker watch
        X refused ─► a forged task message, counted against the tasks queue
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..backends.base import Message, WorkerExit
from ..errors import ForgedMessagesError, PayloadAuthenticationError, UnpicklingError, WorkerDiedError
from ..log import say
from ..protocol.output import replay
from ..protocol.task import (
    CLIENT_MEMORY,
    DIED,
    REJECTED,
    RESULT,
    STARTED,
    WAKE,
    Notice,
    RecentIds,
    ResultMessage,
    open_message,
    sealed_task_id,
)
from .retry import Outage
from .work import Task, rebuild_exception, span

if TYPE_CHECKING:
    from .session import Job

__all__ = ["MAX_FORGED_MESSAGES", "Collector"]

log = logging.getLogger("cloudburst")
#: Messages on one queue that fail their check before the job stops with ForgedMessagesError. None arrive
#: in a healthy job (the queues are the job's own); a few may be stray, twenty are someone at work.
MAX_FORGED_MESSAGES = 20


class Collector:
    """Reads and routes a session's results."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._seen = RecentIds(CLIENT_MEMORY)  # message ids handled from the results queue (task.py: contract)
        self.forged = {"tasks": 0, "results": 0}  # messages that failed their check, per queue

    def run(self) -> None:
        """The collector thread: receive, handle, acknowledge; a short outage is waited out, a longer one or
        a refusal breaks the session (results could no longer arrive)."""
        job = self.job
        results = job.resources.results
        outage = Outage(job.backend.is_transient)
        while not job.lifecycle.closed:
            try:
                messages = results.receive(10, wait=job.backend.result_wait)
                for message in messages:
                    self.handle(message.body)
                if messages:
                    results.ack([m.receipt for m in messages])
                outage.ok()
            except Exception as exc:
                if job.lifecycle.closed:
                    return  # the queues were deleted under a receive or an ack: the job is over
                if not outage.wait_out(exc, "reading results"):
                    job.break_(exc)  # results can no longer arrive: say so rather than hang
                    return

    def delivered(self, body: bytes) -> None:
        """A message the results queue handed over: like the collector, quiet once the job is closing."""
        try:
            self.handle(body)
        except Exception:
            if not self.job.lifecycle.closed:
                raise

    def handle(self, body: bytes) -> None:
        """Route one message from the results queue: each message id once; one that fails its check
        is counted against the queue and never read."""
        job = self.job
        try:
            opened = open_message(job.key, body, job=job.tag)
        except PayloadAuthenticationError as exc:
            self.on_forged("results", f"a {exc}")
            return
        if not self._seen.add(opened.message_id):
            log.debug("dropped a copy of a message handled already (a duplicate delivery or a replay)")
            return
        kind, message = opened.kind, opened.message
        if kind == RESULT and isinstance(message, ResultMessage):
            self.on_result(message)
        elif kind == STARTED and isinstance(message, Notice):
            self.on_started(message)
        elif kind == DIED and isinstance(message, WorkerExit):
            job.watch.on_died(message)
        elif kind == REJECTED and isinstance(message, Notice):
            self.on_forged("tasks", f"worker {message.worker_id} refused a message: {message.detail}")
        elif kind != WAKE:
            self.on_forged("results", f"a sealed message of kind {kind!r} does not belong on the results queue")

    def on_forged(self, queue: str, detail: str) -> None:
        """A message on ``queue`` failed its check. It names no task (its word cannot be trusted), so no
        task is failed or sent again for it; past ``MAX_FORGED_MESSAGES`` on one queue the job stops."""
        job = self.job
        with job.cond:
            self.forged[queue] += 1
            count = self.forged[queue]
        if count > MAX_FORGED_MESSAGES:
            log.debug("%s", detail)
            return
        say(
            f"a message on the job's {queue} queue failed its check and was dropped unread ({detail}); "
            f"{count} so far, the job stops at {MAX_FORGED_MESSAGES}"
        )
        if count < MAX_FORGED_MESSAGES:
            return
        named = getattr(job.resources.tasks if queue == "tasks" else job.resources.results, "url", None)
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
        threading.Thread(target=job.watch.stop_workers, name="cloudburst-stopper", daemon=True).start()
        job.break_(error)

    def on_leased(self, worker_id: str, messages: Sequence[Message]) -> None:
        """The task queue gave tasks to a worker: what an S notice would say, before the worker runs them."""
        self._started(worker_id, [(self._leased_task_id(m.body), m.receive_count, m.receipt) for m in messages])

    def _leased_task_id(self, body: bytes) -> int:
        """The task a leased message names: known without a check when this client sealed these very bytes
        (its first lease); else checked here, and a forged one names no task (-1: the worker will refuse it,
        and say so)."""
        job = self.job
        known = job.dispatcher.sealer.sealed_here(body)
        if known is not None:
            return known
        task_id = sealed_task_id(job.key, body, job=job.tag)
        return -1 if task_id is None else task_id

    def on_started(self, notice: Notice) -> None:
        """A worker took tasks (its S notice)."""
        receipts = notice.receipts or ("",) * len(notice.task_ids)
        self._started(notice.worker_id, zip(notice.task_ids, notice.attempts, receipts, strict=True))

    def _started(self, worker: str, started: Iterable[tuple[int, int, str]]) -> None:
        """A worker took tasks ``(task id, attempt, receipt)``: remember it for blame, mark submitted futures
        running."""
        job = self.job
        with job.cond:
            found = (job.table.started(task_id, worker, attempt, receipt) for task_id, attempt, receipt in started)
            tasks = [task for task in found if task is not None]
            death = job.watch.worker_started(worker)
        for task in tasks:
            for item in task.items:
                if not item.future.running() and not item.future.done():
                    item.future.set_running_or_notify_cancel()
        if death is not None:
            job.watch.tasks_lost(tasks, death)

    def on_result(self, result: ResultMessage) -> None:
        """A task's result: its items finish, or it goes again in parts (asked for, or unpicklable here)."""
        job = self.job
        with job.cond:
            task = job.table.finish(result.task_id, result.compute_seconds if result.failure is None else None)
            job.progress.notify_all()
            if job.table.pending:  # a slot came free (or a probe's time is known): the dispatcher may plan more
                job.cond.notify_all()
        if task is None:
            return  # a duplicate delivery: the first result won
        if result.events:
            replay(result.events)
        if result.split:
            self.resend_in_parts(task)
        elif result.failure is not None:
            exc = rebuild_exception(result.failure, where=f"task {task.task_id} on worker {result.worker_id}")
            if isinstance(exc, WorkerDiedError):
                exc = job.watch.died_error(task, exc)
            job.finish_items(task, [None] * len(task), dict.fromkeys(range(len(task)), exc))
        else:
            self._finish(task, result)

    def _finish(self, task: Task, result: ResultMessage) -> None:
        job = self.job
        try:
            values = job.unpacker.unpack(result.values) if result.values is not None else [None] * len(task)
        except Exception as exc:
            if len(task) > 1:
                self.resend_in_parts(task)  # run again in parts, so only the culprit fails
                return
            error = UnpicklingError(
                f"the result of item {span(task.labels)} came back but could not be unpickled here: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            job.finish_items(task, [None], {0: error})
            return
        where = f"item {{index}} on worker {result.worker_id}"
        errors = {
            pos: rebuild_exception(err, where=where.format(index=task.labels[pos]))
            for pos, err in result.errors.items()
        }
        job.finish_items(task, values, errors)  # type: ignore[arg-type]

    def resend_in_parts(self, task: Task) -> None:
        """Send a task's calls again in smaller tasks (a finished task: its message is gone)."""
        with self.job.cond:
            parts = self.job.table.split(task)
        self.job.dispatcher.send_parts(parts)
