"""The worker: ``python -m cloudburst.worker``. One loop for every backend.

::

    connect (backend.connect_worker from the environment)
    loop:
        receive tasks (lease) ── none ─► idle too long? ─► retire
        authenticate each ── bad seal, other job, other format ─► refuse (X notice), delete, never unpickle
        finished that message id already? ─► a copy (replay or duplicate): delete, not run again
        announce (S notice: which tasks this worker holds, for crash attribution;
                  not sent when the backend's task queue reports leases itself)
        for each task:
            too many deliveries? ─► give up: report WorkerDiedError, delete
            load function + calls ─► run each call, output captured per item     (execute.py)
            pack results (big ones to the store) ─► send R ─► ack (delete the task)
                (a Finishing task queue takes the last result, its ack and the next receive in one exchange)

Watchdogs run beside the loop: the lease keeper extends the leases of running
tasks; the control watch exits when the job has ended or the client's
heartbeat is stale (in a supervised worker the supervisor does this); the
parent watch exits when the client's process is gone.

Threads of this process can be starved by a task that holds the GIL in a long C
call, so what must stop a worker does not depend on them: a worker started by a
local client or a supervisor asks the kernel to kill it when its parent dies
(``die_with_parent``), and its memory limit is the kernel's (``memlimit``; the
memory watch is only the fallback). Every Fargate task runs the supervisor
(``supervisor.py``), which starts N such loops as child processes (N vCPUs),
reports a child that dies (``D`` notice), starts another in its place, and stops
them all when the job ends or the client falls silent.

A worker keeps its files (decompressed blobs) in its scratch folder
(``scratch``), removed as it exits, even by ``os._exit`` or SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import traceback
from typing import NoReturn

from ..backends.base import EXIT_REASON_PREFIX, Finishing, Message, WorkerSide
from ..core import scratch
from ..errors import (
    PayloadAuthenticationError,
    WorkerDiedError,
)
from ..protocol import workerenv
from ..protocol.exitcodes import OOM_EXIT_CODE
from ..protocol.sealing import job_tag
from ..protocol.serialize import Packer, Unpacker
from ..protocol.task import (
    REJECTED,
    RESULT,
    STARTED,
    TASK,
    WORKER_MEMORY,
    Notice,
    RecentIds,
    ResultMessage,
    TaskMessage,
    encode,
    open_control,
    open_message,
)
from ..protocol.workerenv import WireEnvironmentError, WorkerEnv
from . import memlimit
from .execute import TaskRunner, item_error

__all__ = ["Worker", "die_of_sigterm", "leave", "say_exit_reason"]


class Worker:
    """Runs tasks from a queue until retired. All backends share this loop."""

    def __init__(self, side: WorkerSide, env: WorkerEnv, *, announce: bool = True, own_process: bool = False) -> None:
        """``own_process``: this loop is its process (``main``), so its watchdogs may end the process and its
        memory limit is the process's; otherwise (a loop on a thread) they only stop the loop."""
        self.side = side
        self.env = env
        self.announce_tasks = announce
        self.own_process = own_process
        key = str(side.extra.get("job_key") or env.job_key)
        if not key:
            raise WireEnvironmentError(f"{workerenv.variable('job_key')} is not set, and the backend found no key")
        self.key = bytes.fromhex(key)
        self.worker_id = str(side.extra.get("worker_id") or worker_id(env))
        self.job = job_tag(env.job_id)
        self._finished = RecentIds(WORKER_MEMORY)  # task message ids whose result this worker sent (task.py)
        self.lease_seconds = env.lease_seconds
        self.idle_timeout = env.idle_timeout
        self.client_timeout = env.client_timeout
        self.control_period = env.control_period
        self.slots = 1
        self.memory_limit = env.memory_limit_mib * 2**20 if env.memory_limit_mib is not None else None
        self.memory_mode = memlimit.POLL  # main() sets what enforces the limit
        self.supervised = env.supervised
        self.inline_limit = env.inline_limit
        self._cache = scratch.make("blobs-", reaper=False)
        self.unpacker = Unpacker(side.store, self._cache)
        self.packer = Packer(side.store, inline_limit=self.inline_limit, compress=env.compress)
        self._held: dict[str, float] = {}  # receipt -> lease end
        self._held_lock = threading.Lock()
        self._stopping = threading.Event()
        self._heartbeat: tuple[float, float] | None = None  # (last heartbeat value, when it changed here)
        self._last_work = time.monotonic()
        self._outbox: list[tuple[bytes, str]] = []  # (sealed result, its task's receipt) not yet sent
        # looked up once: an isinstance check against a Protocol costs more than the rest of a tiny task's loop
        self._finishing = side.tasks if isinstance(side.tasks, Finishing) else None
        self.runner = TaskRunner(self.unpacker, self.packer, self.worker_id, self.check_memory_error)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Take and run tasks until retired (idle too long) or stopped; the watchdogs end with it."""
        self.start_watchdogs()
        try:
            while not self._stopping.is_set():
                messages = self.next_tasks()
                if not messages:
                    if self.should_retire():
                        return 0
                    continue
                self._last_work = time.monotonic()
                tasks = self.authenticate(messages)
                self.announce(tasks)
                for message, task, message_id in tasks:
                    self.flush()  # a result never waits while another task runs
                    self.run_task(message, task, message_id)
                self._last_work = time.monotonic()
            self.flush()
            return 0
        finally:
            self._stopping.set()
            shutil.rmtree(self._cache, ignore_errors=True)

    def next_tasks(self) -> list[Message]:
        """Lease the next tasks. The last task's result and its acknowledgement go first: with the request, in
        one exchange, when the task queue is ``Finishing``."""
        wait = min(20.0, self.control_period)
        if self._outbox and self._finishing is not None:
            bodies, receipts = self._take_outbox()
            return self._finishing.finish_and_receive(self.side.results, bodies, receipts, self.slots, wait)
        self.flush()
        return self.side.tasks.receive(self.slots, wait)

    def flush(self) -> None:
        """Send the results waiting to go, then acknowledge their tasks (in that order: a result is never lost
        to its acknowledgement)."""
        if self._outbox:
            bodies, receipts = self._take_outbox()
            self.side.results.send_batch(bodies)
            self.side.tasks.ack(receipts)

    def _take_outbox(self) -> tuple[list[bytes], list[str]]:
        outbox, self._outbox = self._outbox, []
        return [body for body, _ in outbox], [receipt for _, receipt in outbox]

    def end(self, code: int) -> None:
        """What a watchdog does to stop this worker: end the process (its own), else stop the loop."""
        if self.own_process:
            leave(code)
        else:
            self._stopping.set()

    def should_retire(self) -> bool:
        idle = time.monotonic() - self._last_work
        if self.idle_timeout is not None and idle >= self.idle_timeout:
            self.say_exit(f"idle for {idle:.0f} s (idle_timeout={self.idle_timeout:g})")
            return True
        return False

    def watch_control(self) -> None:
        """Leave when the job is over, even in the middle of a task (nobody would collect its result)."""
        while not self._stopping.wait(self.control_period):
            try:
                over = self.job_over()
            except Exception as exc:  # an unreachable store: the next look decides
                print(f"cloudburst-worker: could not read the job's control record: {exc}", file=sys.__stderr__)
                continue
            if over:
                self.end(0)

    def job_over(self) -> bool:
        """Read the job's control record: stopped, or has the client been silent too long?

        A record that fails its seal check is ignored (and logged): it neither stops this worker nor
        counts as a heartbeat, so a forged one can at most let the client's silence show.
        """
        try:
            state = self.control("state")
        except FileNotFoundError:
            if self._heartbeat is not None:
                self.say_exit("the job's data is gone (the job ended)")
                return True
            return False
        if state is None:
            state = {"heartbeat": self._heartbeat[0] if self._heartbeat else 0.0}
        if state.get("stopped"):
            self.say_exit("the job ended")
            return True
        # Silence is measured on this machine's clock, from when the heartbeat last changed:
        # a client whose clock is off does not stop its workers.
        now = time.monotonic()
        beat = float(state.get("heartbeat", 0))  # type: ignore[arg-type]
        if self._heartbeat is None or beat != self._heartbeat[0]:
            self._heartbeat = (beat, now)
        silent = now - self._heartbeat[1]
        if self.client_timeout is not None and silent > self.client_timeout:
            self.say_exit(
                f"the client has been silent for {silent:.0f} s (client_timeout={self.client_timeout:g}); "
                "stopping so that nothing runs unpaid-for"
            )
            return True
        return False

    def control(self, name: str) -> dict[str, object] | None:
        """Control record ``control/<name>``, or None (logged) when it fails its seal check.
        Raises FileNotFoundError when there is none."""
        data = self.side.store.get(f"control/{name}")
        try:
            return open_control(self.key, name, data, job=self.job)
        except (PayloadAuthenticationError, ValueError) as exc:
            print(f"cloudburst-worker: ignored control record {name!r}: {exc}", file=sys.__stderr__)
            return None

    def cancelled(self, task_id: int) -> bool:
        """Has the client cancelled this task's message (after splitting it)? Only a sealed marker counts."""
        try:
            return self.control(f"cancelled/{task_id}") is not None
        except FileNotFoundError:
            return False

    def authenticate(self, messages: list[Message]) -> list[tuple[Message, TaskMessage, bytes]]:
        """The task messages that pass their check, with their message ids; the others are refused."""
        good = []
        for message in messages:
            try:
                opened = open_message(self.key, message.body, job=self.job)
                if opened.kind != TASK or not isinstance(opened.message, TaskMessage):
                    raise PayloadAuthenticationError("message on the task queue is not a task")
            except PayloadAuthenticationError as exc:
                self.refuse(message, str(exc))
                continue
            good.append((message, opened.message, opened.message_id))
        return good

    def refuse(self, message: Message, why: str) -> None:
        """Delete a message that failed its check, and tell the client, which counts them per queue. The
        notice names no task: the message's own word on which task it is cannot be trusted."""
        notice = Notice((), self.worker_id, detail=why)
        self.side.results.send_batch([encode(self.key, REJECTED, 0, notice, job=self.job)])
        self.side.tasks.ack([message.receipt])

    def announce(self, tasks: list[tuple[Message, TaskMessage, bytes]]) -> None:
        if not tasks or not self.announce_tasks:
            return
        notice = Notice(
            tuple(t.task_id for _, t, _ in tasks),
            self.worker_id,
            tuple(m.receive_count for m, _, _ in tasks),
            receipts=tuple(m.receipt for m, _, _ in tasks),
        )
        self.side.results.send_batch([encode(self.key, STARTED, 0, notice, job=self.job)])

    def run_task(self, message: Message, task: TaskMessage, message_id: bytes) -> None:
        """Run a task and send its result, unless this worker has finished this very message already."""
        if message_id in self._finished:
            # A copy of a message whose result this worker sent: a replay, or a redelivery after the
            # acknowledgement was lost. Either way its result is on its way; running it again would only
            # repeat its side effects. (A redelivery after a worker *died* reaches a worker that never
            # finished it, and runs.)
            print(
                f"cloudburst-worker: dropped a copy of task {task.task_id}'s message, finished here already",
                file=sys.__stderr__,
            )
            self.side.tasks.ack([message.receipt])
            return
        if message.receive_count > 1 and self.cancelled(task.task_id):
            self._finished.add(message_id)
            self.side.tasks.ack([message.receipt])  # the client split it after a crash; its parts run instead
            return
        if message.receive_count > task.max_attempts:
            died = WorkerDiedError(
                f"task {task.task_id} was started {message.receive_count - 1} times and its worker "
                "died each time (killed, crashed or out of memory)",
                attempts=message.receive_count - 1,
            )
            self.send(
                ResultMessage(task.task_id, self.worker_id, message.receive_count, failure=item_error(died, 0)),
                message,
                message_id,
            )
            return
        with self._held_lock:
            self._held[message.receipt] = time.monotonic() + self.lease_seconds
        try:
            result = self.runner.execute(task, message.receive_count)
        finally:
            with self._held_lock:
                self._held.pop(message.receipt, None)
        self.send(result, message, message_id)

    def send(self, result: ResultMessage, message: Message, message_id: bytes) -> None:
        """Seal a task's result and remember its message as finished; the result goes, then the message is
        deleted from the queue, with the next receive (``next_tasks``) or before the next task (``flush``)."""
        body = encode(self.key, RESULT, result.task_id, result, job=self.job)
        self._finished.add(message_id)  # before the ack: if that is lost, the copy that comes back is dropped
        self._outbox.append((body, message.receipt))

    # ------------------------------------------------------------------ watchdogs
    def start_watchdogs(self) -> None:
        threading.Thread(target=self.keep_leases, name="lease-keeper", daemon=True).start()
        if not self.supervised:
            threading.Thread(target=self.watch_control, name="control-watch", daemon=True).start()
        if self.side.parent_pid is not None:  # where the kernel cannot end it with its parent (not Linux)
            threading.Thread(
                target=self.watch_parent, args=(self.side.parent_pid,), name="parent-watch", daemon=True
            ).start()
        if self.own_process and self.memory_limit is not None and self.memory_mode == memlimit.POLL:
            threading.Thread(
                target=self.watch_memory, args=(self.memory_limit,), name="memory-watch", daemon=True
            ).start()

    def keep_leases(self) -> None:
        period = max(0.05, self.lease_seconds / 3)
        while not self._stopping.wait(period):
            with self._held_lock:
                receipts = list(self._held)
            if receipts:
                try:
                    self.side.tasks.extend(receipts, self.lease_seconds)
                except Exception as exc:  # the next receive will report a broken queue
                    print(f"cloudburst-worker: could not extend leases: {exc}", file=sys.__stderr__)

    def watch_parent(self, parent_pid: int) -> None:
        while not self._stopping.wait(0.25):
            if os.getppid() != parent_pid:
                self.say_exit("the client process is gone")
                self.end(0)

    def watch_memory(self, limit: int) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stopping.wait(0.05):
            try:
                with open("/proc/self/statm") as fh:
                    rss = int(fh.read().split()[1]) * page
            except OSError:  # pragma: no cover - not Linux: the limit is not enforced locally
                return
            if rss > limit:
                self.say_exit(
                    f"OutOfMemoryError: the worker used {rss / 2**20:.0f} MiB, over its memory limit of "
                    f"{limit / 2**20:.0f} MiB; ask for more memory= or use less per task"
                )
                self.end(OOM_EXIT_CODE)

    def check_memory_error(self, exc: BaseException) -> None:
        """Under RLIMIT_DATA an allocation past the limit fails instead of the kernel killing the worker: a
        MemoryError from a refused allocation (the interpreter's own, which has no arguments, or numpy's) then
        ends the worker as out of memory, as the kill would (and does elsewhere)."""
        if not isinstance(exc, MemoryError) or self.memory_mode != memlimit.RLIMIT or self.memory_limit is None:
            return
        asked = getattr(exc, "_total_size", None)  # numpy says how much it asked for
        if exc.args and asked is None:
            return  # raised by the task's own code ("MemoryError('...')"), not a refused allocation: it is data
        asked = asked if isinstance(asked, int) else 0
        used = memlimit.data_bytes() + asked
        what = f"an allocation of {asked / 2**20:.0f} MiB" if asked else "an allocation"
        os.write(2, "".join(traceback.format_exception(exc)).encode())
        self.say_exit(
            f"OutOfMemoryError: the worker used {used / 2**20:.0f} MiB, over its memory limit of "
            f"{self.memory_limit / 2**20:.0f} MiB with {what} the kernel refused ({memlimit.RLIMIT}); "
            "ask for more memory= or use less per task"
        )
        self.end(OOM_EXIT_CODE)

    def say_exit(self, reason: str) -> None:
        say_exit_reason(reason)


def say_exit_reason(reason: str) -> None:
    """Write the line that tells the launcher why this process exits (``backends.base.reason_in_log`` reads it):
    one ``os.write``, safe in a signal handler and from any thread."""
    os.write(2, f"{EXIT_REASON_PREFIX}{reason}\n".encode())


def worker_id(env: WorkerEnv) -> str:
    """This worker's name as the launcher gave it (a backend may name it in ``WorkerSide.extra``)."""
    return env.worker_id or f"pid{os.getpid()}"


def leave(code: int) -> NoReturn:
    """End this process now, from any thread, removing its scratch folder first (``os._exit`` skips atexit)."""
    scratch.remove_own()
    os._exit(code)


def die_of_sigterm() -> None:
    """Exit as a process killed by SIGTERM does (exit code 143 in a container), having said so and removed
    this process's scratch folder."""
    say_exit_reason("stopped by SIGTERM")
    scratch.remove_own()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
