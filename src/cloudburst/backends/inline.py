"""The ``inline`` backend: every call runs in the client's own process, for debugging.

::

    client process
    Executor ─► core ─► MemoryQueue (tasks) ─► worker loop on a thread ─► your function
                 ▲                                   │   (print, breakpoint(), pdb: your terminal)
                 └──────── MemoryQueue (results) ◄───┘

The worker loop is the one every backend runs (``cloudburst.worker.loop.Worker``), reached through
the same contracts, so what works here works on the other backends, minus process isolation:
``breakpoint()`` inside a function stops in the client's terminal, as submitit's DebugExecutor does,
and a failing call's traceback shows the function's own frames. A call that kills its process
(``os._exit``, a segfault) kills the client, and a running call cannot be stopped. Output is not
captured: it goes straight to the terminal, so it is not tagged ``[item N]``.
"""

from __future__ import annotations

import shutil
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..core import scratch
from ..protocol.output import Capture
from ..protocol.workerenv import WorkerEnv
from ..worker.loop import Worker
from .base import READY_LINE, Backend, JobResources, Message, WorkerExit, WorkerSide
from .local import LocalStore
from .localqueue import MemoryQueue

__all__ = ["InlineBackend", "InlineLauncher"]


@dataclass
class _InlineJob:
    """What the worker threads of one job reach through ``connect_worker``."""

    root: Path
    store: LocalStore
    tasks: MemoryQueue
    results: MemoryQueue
    stops: dict[str, threading.Event] = field(default_factory=dict)  # worker id -> told to stop


# job id -> its queues and store: the inline equivalent of the address a worker process is given
_JOBS: dict[str, _InlineJob] = {}
_JOBS_LOCK = threading.Lock()


class _Uncaptured(Capture):
    """Leaves a call's output alone. The worker's capture swaps the process's ``sys.stdout`` during a
    task, which here is the client's: ``breakpoint()`` would talk into the capture buffer."""

    def begin(self, log_level: int) -> None:
        self.active = False

    def end(self) -> list[list[Any]]:
        return []


class _StoppableQueue:
    """The task queue as one inline worker sees it: once the worker is told to stop, ``receive`` raises
    ``EOFError``, as a worker process's queue does when its client hangs up (the loop then ends)."""

    def __init__(self, queue: MemoryQueue, stop: threading.Event) -> None:
        self._queue = queue
        self._stop = stop

    def send_batch(self, bodies: Sequence[bytes]) -> None:
        self._queue.send_batch(bodies)

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        if self._stop.is_set():
            raise EOFError("the inline worker was told to stop")
        return self._queue.receive(max_messages, wait)

    def ack(self, receipts: Sequence[str]) -> None:
        self._queue.ack(receipts)

    def extend(self, receipts: Sequence[str], seconds: float) -> None:
        self._queue.extend(receipts, seconds)

    def purge(self) -> None:
        self._queue.purge()


class InlineLauncher:
    """Worker loops on threads of the client's process. Worker ids are ``inline1``, ``inline2``, ..."""

    def __init__(self, env: WorkerEnv, job: _InlineJob) -> None:
        self._env = env
        self._job = job
        self._threads: dict[str, threading.Thread] = {}
        self._exits: dict[str, WorkerExit] = {}  # ended, not yet reported by poll
        self._lock = threading.Lock()
        self._counter = 0

    def start(self, count: int) -> list[str]:
        """Start ``count`` worker threads."""
        ids = []
        for _ in range(count):
            with self._lock:
                self._counter += 1
                worker_id = f"inline{self._counter}"
                self._job.stops[worker_id] = threading.Event()
            env = self._env.replace(worker_id=worker_id)
            thread = threading.Thread(target=self._run, args=(worker_id, env), name=f"cloudburst-{worker_id}")
            thread.daemon = True  # a call that never returns must not keep the client alive
            with self._lock:
                self._threads[worker_id] = thread
            thread.start()
            ids.append(worker_id)
        return ids

    def _run(self, worker_id: str, env: WorkerEnv) -> None:
        """One worker's life: connect, loop until told to stop, then record how it ended."""
        tail = ""
        try:
            worker = Worker(InlineBackend.connect_worker(env), env)
            worker.runner.capture = _Uncaptured()
            tail = f"cloudburst-worker {worker_id}{READY_LINE}{env.job_id[:12]} (backend inline)\n"
            try:
                code, reason = worker.run(), "retired"
            except EOFError:
                code, reason = 0, "stopped (the job ended)"
            finally:
                worker.end(0)  # ends its lease keeper and watchdogs (a worker on a thread only stops its loop)
        except BaseException as exc:  # the loop itself failed: report it as a death, with its traceback
            code, reason = 1, f"{type(exc).__name__}: {exc}"
            tail += traceback.format_exc()
        with self._lock:
            self._exits[worker_id] = WorkerExit(worker_id, code, reason, tail[-2000:])

    def stop(self, worker_ids: Sequence[str] | None = None) -> None:
        """Tell the workers to stop; each does once its current call returns (a call cannot be stopped)."""
        with self._lock:
            targets = [(w, t) for w, t in self._threads.items() if worker_ids is None or w in worker_ids]
            for worker_id, _ in targets:
                self._job.stops[worker_id].set()
        for _, thread in targets:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)  # a worker waiting for tasks notices within its receive wait

    def poll(self) -> list[WorkerExit]:
        """Workers whose thread ended since the last call."""
        with self._lock:
            done = [w for w, t in self._threads.items() if w in self._exits and not t.is_alive()]
            for worker_id in done:
                del self._threads[worker_id]
            return [self._exits.pop(worker_id) for worker_id in done]

    def running(self) -> int:
        """Worker threads not yet reported by ``poll``."""
        with self._lock:
            return len(self._threads)


class InlineBackend(Backend):
    """Runs every call in the client's process, on worker threads: for debugging with breakpoints."""

    name: ClassVar[str] = "inline"
    max_message_bytes: ClassVar[int] = 1 << 20
    target_task_seconds: ClassVar[float] = 0.1
    lease_seconds = 30.0
    #: the longest a worker thread waits for tasks before it looks whether it was told to stop
    control_period = 0.5

    @classmethod
    def defaults(cls) -> dict[str, object]:
        """One worker thread: calls run one at a time, in order, which is what a debugging session wants."""
        return {"workers": 1}

    def open_job(self, job_id: str, key: bytes, worker_env: WorkerEnv) -> JobResources:
        """A store folder and two in-memory queues, reachable by the job's worker threads."""
        root = scratch.make("inline-")
        job = _InlineJob(root, LocalStore(root), MemoryQueue(self.lease_seconds), MemoryQueue(self.lease_seconds))
        with _JOBS_LOCK:
            _JOBS[job_id] = job
        # The launcher stops these workers itself: they are supervised, so the worker's control watch
        # leaves that to it rather than ending the loop on its own.
        env = worker_env.replace(backend=self.import_path(), supervised=True)
        self._job_id = job_id
        return JobResources(job.store, job.tasks, job.results, InlineLauncher(env, job))

    def close_job(self, resources: JobResources, *, keep: bool = False) -> None:
        """Stop the worker threads, close the queues, and delete the job's folder unless ``keep``."""
        with _JOBS_LOCK:
            job = _JOBS.pop(self._job_id, None)
        if job is not None:
            job.tasks.close()  # wakes the workers waiting for tasks: they see that they are to stop
        resources.launcher.stop()
        resources.launcher.poll()
        if job is None:
            return
        job.results.close()
        if not keep:
            shutil.rmtree(job.root, ignore_errors=True)

    @classmethod
    def connect_worker(cls, env: WorkerEnv) -> WorkerSide:
        """The job's store and queues, found by the job id in ``env`` (the worker runs in this process)."""
        with _JOBS_LOCK:
            job = _JOBS.get(env.job_id)
        if job is None:
            raise EOFError(f"inline job {env.job_id[:12]} has ended")
        stop = job.stops.setdefault(env.worker_id, threading.Event())
        return WorkerSide(job.store, _StoppableQueue(job.tasks, stop), job.results)
