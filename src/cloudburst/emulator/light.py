"""EMULATION, light mode: one process serves many emulated Fargate tasks, each on threads.

A thousand worker processes (a Python interpreter, boto3 and cloudpickle each: some 60 MiB) do not
fit on a laptop; a thousand worker loops on threads of the emulator's process do. Each task still
runs the real :class:`cloudburst.worker.loop.Worker`, built from the environment ECS gives its
container, pulling from the job's (emulated) queues with its task role's credentials::

    RunTask ─► EcsAgent (light) ─► ThreadTask (acts as the container's process: poll, signals, exit code)
                                ├── N worker loops (WorkerEnv.slots), ids <task>.<k> as the supervisor's
                                └── control watch: the job ended, or the client fell silent ─► exit 0

What a worker process does to its whole process is left out, as it would reach the client's:
signal handlers (SIGTERM, SIGINT), ``die_with_parent``, the kernel memory limit and the memory watch
(both measure the whole process), ``os._exit`` (``leave``), ``sys.path`` and ``os.environ``
(clients get the task's credentials from :func:`cloudburst.backends.aws.clients.clients_from`, not
from the environment), ``faulthandler``, and the stream swap of output capture (per thread instead:
:mod:`.threadcapture`). Signals are emulated: SIGTERM or SIGKILL ends the task at once with exit code
143 or 137, and from then on its threads reach nothing (their next AWS call raises), though a thread
in the middle of a call of user code runs it to its end. Seeds (``random``, ``numpy.random``) are
process-wide, so items seeded per item on concurrent threads may see each other's draws.

Tasks share one boto3 session and one client per service for each task role (clients are
thread-safe), with a connection pool big enough for every loop's long poll. A task whose image is
not this interpreter (:meth:`Emulator.image`), or whose command is not ``python -m cloudburst.worker``,
runs as a process, as in the default mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

import boto3
import botocore.config
import botocore.credentials
import botocore.session

from ..backends import get_backend
from ..backends.aws.clients import clients_from
from ..backends.aws.credentials import Credentials
from ..backends.base import EXIT_REASON_PREFIX, Backend, Queue, Store, WorkerSide
from ..protocol import workerenv
from ..protocol.workerenv import WorkerEnv, from_environ
from ..worker.execute import TaskRunner
from ..worker.loop import Worker
from .threadcapture import ThreadCapture

__all__ = ["WORKER_COMMAND", "SharedIdentity", "ThreadTask", "ThreadWorker"]

POOL = 2048  # connections per shared client: one long poll per worker loop, and their other calls
WORKER_COMMAND = ("-m", "cloudburst.worker")


class Severed(BaseException):
    """Raised in a thread of a task that was killed: the process it stands for is gone."""


class _Severable:
    """A Store or Queue that raises :class:`Severed` once its task is killed, before and after each call."""

    def __init__(self, target: object, severed: threading.Event) -> None:
        self._target = target
        self._severed = severed

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._target, name)
        if not callable(found):
            return found
        severed = self._severed

        def call(*args: Any, **kwargs: Any) -> Any:
            if severed.is_set():
                raise Severed
            out = found(*args, **kwargs)
            if severed.is_set():
                raise Severed  # what a killed process received never reaches anyone
            return out

        return call


def _metadata(credentials: Credentials) -> dict[str, str]:
    return {
        "access_key": str(credentials["AccessKeyId"]),
        "secret_key": str(credentials["SecretAccessKey"]),
        "token": str(credentials["SessionToken"]),
        "expiry_time": credentials["Expiration"].isoformat(),
    }


class _Given(botocore.credentials.CredentialProvider):  # type: ignore[misc]  # botocore has no types
    METHOD = "emulated-ecs-task-role"

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> botocore.credentials.Credentials:
        return self._credentials


class SharedIdentity:
    """One task role's credentials (fetched again before they expire) and its clients, shared by threads."""

    def __init__(self, fetch: Callable[[], Credentials]) -> None:
        credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata=_metadata(fetch()), refresh_using=lambda: _metadata(fetch()), method=_Given.METHOD
        )
        core = botocore.session.Session()
        # As in a container: not the user's files; the role's credentials and no others.
        core.set_config_variable("config_file", "/dev/null")
        core.set_config_variable("credentials_file", "/dev/null")
        core.register_component("credential_provider", botocore.credentials.CredentialResolver([_Given(credentials)]))
        self.session = boto3.session.Session(botocore_session=core)
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str, region: str | None, config: botocore.config.Config) -> Any:
        """The shared client for ``service`` (made under a lock: boto3 sessions are not thread-safe)."""
        with self._lock:
            found = self._clients.get((service, region))
            if found is None:
                found = self.session.client(
                    service, region_name=region, config=config.merge(botocore.config.Config(max_pool_connections=POOL))
                )
                self._clients[(service, region)] = found
            return found


class _ThreadRunner(TaskRunner):
    """Runs a task's calls with their output captured per thread; item failures go to the task's log."""

    def __init__(self, worker: Worker, task: ThreadTask) -> None:
        super().__init__(worker.unpacker, worker.packer, worker.worker_id, worker.check_memory_error)
        self.capture = ThreadCapture()
        self.task = task

    def log_failure(self, task_id: int, index: int, error: Any) -> None:
        self.task.write(f"cloudburst-worker {self.worker_id}: task {task_id}, item {index} failed:\n{error.traceback}")


class ThreadWorker(Worker):
    """A worker loop on a thread of a :class:`ThreadTask`: no process-wide watchdogs, its words in the task's log."""

    def __init__(self, side: WorkerSide, env: WorkerEnv, task: ThreadTask, *, announce: bool) -> None:
        super().__init__(side, env, announce=announce)  # not its own process: its watchdogs only stop the loop
        self.memory_limit = None  # the memory watch measures the whole process: it would end the emulator
        self.runner = _ThreadRunner(self, task)
        self.task = task

    def start_watchdogs(self) -> None:
        """The lease keeper only: the task watches the job, and no parent or memory watch can end a thread."""
        threading.Thread(target=self.keep_leases, name=f"lease-keeper {self.worker_id}", daemon=True).start()

    def say_exit(self, reason: str) -> None:
        self.task.write(f"{EXIT_REASON_PREFIX}{reason}\n")


class ThreadTask:
    """An emulated container whose process is threads of this one. Acts as ``subprocess.Popen`` for the agent."""

    def __init__(self, env: dict[str, str], log: IO[bytes], identity: SharedIdentity | None) -> None:
        self.env = env
        self.log = log
        self.identity = identity
        self.returncode: int | None = None
        self.severed = threading.Event()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._codes: list[int] = []
        self._left = threading.Semaphore(0)  # released as each loop ends, and once as the task ends
        name = f"emulated-task {env.get(workerenv.variable('worker_id'), '?')}"
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._backend: type[Backend] | None = None  # known once the task connects

    # ------------------------------------------------------------------ as a process
    @property
    def pid(self) -> int:
        """No process of its own (0: :meth:`EcsAgent.pids` leaves it out)."""
        return 0

    def start(self) -> ThreadTask:
        self._thread.start()
        return self

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._ended.wait(timeout)
        if self.returncode is None:
            raise TimeoutError(f"emulated task still running after {timeout} s")
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """SIGTERM and SIGKILL end the task now, as they end a worker process; others are ignored, as it does."""
        if sig == signal.SIGTERM:
            self.write(f"{EXIT_REASON_PREFIX}stopped by SIGTERM\n")
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._end(-sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def write(self, text: str) -> None:
        """A line into the container's log (to CloudWatch, as the agent copies it)."""
        with self._lock, contextlib.suppress(ValueError, OSError):  # closed: the task is over
            self.log.write(text.encode("utf-8", "replace"))
            self.log.flush()

    def _end(self, code: int) -> None:
        with self._lock:
            if self.returncode is None:
                self.returncode = code
        self.severed.set()
        self._ended.set()
        self._left.release()  # wakes the watch, which then ends

    # ------------------------------------------------------------------ as the supervisor
    def _main(self) -> None:
        try:
            self._end(self._supervise())
        except Severed:
            pass
        except BaseException:
            self.write(traceback.format_exc())
            self._end(1)

    def _supervise(self) -> int:
        """Start the worker loops; end when they have all retired, or the job is over."""
        env = from_environ(self.env)
        backend = self._backend = get_backend(env.backend)
        with self._identity():
            side = backend.connect_worker(env)
        side = WorkerSide(
            cast(Store, _Severable(side.store, self.severed)),
            cast(Queue, _Severable(side.tasks, self.severed)),
            cast(Queue, _Severable(side.results, self.severed)),
            None,
            side.extra,
        )
        me = str(side.extra.get("worker_id") or env.worker_id)
        supervised = env.slots > 1 or env.supervisor
        names = [f"{me}.{k}" for k in range(env.slots)] if supervised else [me]  # as the supervisor names them
        loop_env = env.replace(supervised=True)  # this task watches the job for them
        workers = [
            ThreadWorker(
                dataclasses.replace(side, extra={**side.extra, "worker_id": name}),
                loop_env,
                self,
                announce=not backend.reports_leases,
            )
            for name in names
        ]
        self.write(
            f"cloudburst-worker {me}: started for job {env.job_id[:12]} "
            f"({len(workers)} worker loop(s) on threads of the emulator: light mode)\n"
        )
        for worker in workers:
            threading.Thread(target=self._run, args=(worker,), name=worker.worker_id, daemon=True).start()
        return self._watch(workers[0], len(workers))

    def _watch(self, watcher: Worker, count: int) -> int:
        """Wait for the loops to retire, reading the job's control record every control period."""
        while count:
            ended = self._left.acquire(timeout=watcher.control_period)
            if self.severed.is_set():
                raise Severed
            if ended:
                count -= 1
                continue
            try:
                over = watcher.job_over()  # says why, through the watcher's say_exit
            except Exception as exc:  # an unreachable store: the next look decides
                self.write(f"cloudburst-worker: could not read the job's control record: {exc}\n")
                continue
            if over:
                return 0
        return max(self._codes, default=0)

    def _run(self, worker: ThreadWorker) -> None:
        try:
            code = worker.run()
        except Severed:
            return
        except Exception as exc:
            if self._backend is not None and self._backend.job_is_gone(exc):
                worker.say_exit("the job's queue is gone (the job ended)")
                code = 0
            else:
                self.write(traceback.format_exc())  # a loop that fails ends the task, which the client sees stop
                code = 1
        with self._lock:
            self._codes.append(code)
        self._left.release()

    @contextlib.contextmanager
    def _identity(self) -> Iterator[None]:
        if self.identity is None:
            yield  # no task role: no credentials (its calls fail, as a container's would)
            return
        with clients_from(self.identity.client):
            yield
