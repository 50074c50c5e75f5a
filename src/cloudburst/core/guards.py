"""Guards of a running session: the control record (heartbeat, stop flag, cancelled tasks), the
dead-letter queue, and the cost limits. The manager thread calls ``check`` every round."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..errors import CostLimitExceeded, WorkerDiedError
from ..log import say
from ..protocol.task import read_dead_letters, seal_control
from .work import span

if TYPE_CHECKING:
    from .session import Job

__all__ = ["Guards"]

log = logging.getLogger("cloudburst")
DEAD_LETTER_PERIOD = 15.0  # seconds between looks at the dead-letter queue


class Guards:
    """Heartbeat, dead letters and cost for one session (used from the manager thread)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._heartbeat_period = min(30.0, (job.backend.client_timeout or 120.0) / 4)
        self._next_heartbeat = 0.0
        self.next_dead_letter_check = time.monotonic() + DEAD_LETTER_PERIOD
        self._next_cost_check = 0.0
        self._alerted = False
        self._over_budget = False

    def check(self) -> None:
        """One round: heartbeat when due, dead letters when due, cost."""
        self.heartbeat()
        if self.job.table.policy.dead_letters:
            self.check_dead_letters()
        self.check_cost()

    # ------------------------------------------------------------------ control record
    def write_control(self, *, stopped: bool) -> None:
        """The job's state for its workers: the client's heartbeat, and whether the job has stopped."""
        job = self.job
        state: dict[str, object] = {"heartbeat": time.time(), "stopped": stopped}
        job.resources.store.put("control/state", seal_control(job.key, "state", state, job=job.tag))

    def write_cancelled(self, task_id: int) -> None:
        """Tell workers a task was cut up: one that gets its old message skips it."""
        job, name = self.job, f"cancelled/{task_id}"
        job.resources.store.put(f"control/{name}", seal_control(job.key, name, {}, job=job.tag))

    def heartbeat(self) -> None:
        """Write the control record when the heartbeat is due, so workers know the client is there."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self._heartbeat_period
            self.write_control(stopped=False)

    # ------------------------------------------------------------------ dead letters
    def check_dead_letters(self) -> None:
        """Tasks the queue gave up on (delivered too often, every worker died): fail them.

        A sealed message can be copied into the dead-letter queue by anyone who can write there, so one
        fails its task only when its deliveries are used up and its task is neither done nor running on a
        live worker. One whose worker's death is not known here yet is looked at again later.
        """
        job = self.job
        queue = job.resources.dead_letters
        if queue is None or time.monotonic() < self.next_dead_letter_check:
            return
        self.next_dead_letter_check = time.monotonic() + DEAD_LETTER_PERIOD
        after = job.resources.dead_letter_after
        handled = []
        for letter in read_dead_letters(job.key, queue, job=job.tag):
            task_id, deliveries = letter.task.task_id, letter.deliveries
            with job.cond:
                task = job.table.tasks.get(task_id)
                running = task is not None and job.watch.running_on_live_worker(task)
            if task is not None and running and deliveries > after:
                continue  # its worker may have died unseen so far: look again in a while
            handled.append(letter.receipt)
            if task is None or running or deliveries <= after:
                log.warning(
                    "ignored a copy of task %d in the dead-letter queue (%d deliveries; the task is %s)",
                    task_id,
                    deliveries,
                    "done" if task is None else "running" if running else "within its deliveries",
                )
                continue
            error = WorkerDiedError(
                f"items {span(letter.task.indices)}: the task was delivered {deliveries} times and its "
                "worker vanished each time; the queue moved it to the dead-letter queue",
                attempts=deliveries,
            )
            job.fail_task(task_id, error)
        if handled:
            queue.ack(handled)

    # ------------------------------------------------------------------ cost
    def check_cost(self) -> None:
        """Warn once past cost_alert_threshold; at max_cost_per_job stop everything, keep what finished."""
        job = self.job
        limit, alert = job.backend.cost_limits
        now = time.monotonic()
        if not (limit or alert) or now < self._next_cost_check:
            return
        self._next_cost_check = now + 1.0
        cost = job.backend.cost(job.resources)
        if alert and cost >= alert and not self._alerted:
            self._alerted = True
            say(f"this job has cost ${cost:.2f}, past cost_alert_threshold=${alert:g}")
        # What is running now bills at least another minute: stop before that would pass the limit.
        projected = cost + job.backend.hourly_cost(job.resources.launcher.running()) / 60
        if limit and projected >= limit and not self._over_budget:
            self._over_budget = True
            job.resources.launcher.stop()
            exc = CostLimitExceeded(
                f"the job reached max_cost_per_job=${limit:g} (${cost:.2f} spent, ${projected:.2f} with what was "
                "running): its workers were stopped and the remaining work cancelled; finished results are kept",
                cost=cost,
                limit=limit,
            )
            say(str(exc))
            job.break_(exc)
