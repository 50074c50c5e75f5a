"""The three contracts every backend supplies, and the bundle that names them.

::

    Store     blobs by key            put / get / get_file / exists / delete_prefix
    Queue     leased messages         send_batch / receive / ack / extend / purge
    Launcher  worker processes/tasks  start / stop / poll / running

A queue that lives in the client's process may offer more: ``Subscribable``
(hand each message to the client as it is sent, no receive loop) and
``LeaseReporting`` (say which worker took which task; see ``reports_leases``).

A ``Backend`` builds them for one job on the client side (``open_job``) and
again inside a worker (``connect_worker``) from the environment the launcher
gave it. The core never asks which backend it is talking to.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config.options import ExecutorOptions
    from ..protocol.workerenv import WorkerEnv

__all__ = [
    "Backend",
    "JobResources",
    "Launcher",
    "LeaseReporting",
    "Message",
    "Queue",
    "Store",
    "Subscribable",
    "WorkerExit",
    "WorkerSide",
]


@runtime_checkable
class Store(Protocol):
    """Blobs by key. Keys are ``/``-separated paths below the job's prefix."""

    def put(self, key: str, data: bytes | memoryview) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_file(self, key: str, cache_dir: Path) -> Path:
        """A local file holding the blob (downloaded into ``cache_dir`` if need be)."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """One leased message. ``receive_count`` counts deliveries, this one included."""

    receipt: str
    body: bytes
    receive_count: int


@runtime_checkable
class Queue(Protocol):
    """At-least-once delivery with leases: an unacknowledged message comes back when its lease ends."""

    def send_batch(self, bodies: Sequence[bytes]) -> None: ...

    def receive(self, max_messages: int, wait: float) -> list[Message]: ...

    def ack(self, receipts: Sequence[str]) -> None: ...

    def extend(self, receipts: Sequence[str], seconds: float) -> None: ...

    def purge(self) -> None: ...


@runtime_checkable
class Subscribable(Protocol):
    """Optional, for a queue in the client's process: hand every message to ``consumer`` as it is sent.

    The consumer runs in the sender's thread; a subscribed message is never leased, so it needs no ack.
    """

    def subscribe(self, consumer: Callable[[bytes], None]) -> None: ...


@runtime_checkable
class LeaseReporting(Protocol):
    """Optional, for a task queue in the client's process: report each lease as it is given.

    ``callback(worker_id, messages)`` runs before the worker gets the messages.
    """

    def watch_leases(self, callback: Callable[[str, Sequence[Message]], None]) -> None: ...


#: what a worker writes to its output once it has connected to its job (``cloudburst.worker.loop.main``)
READY_LINE = ": started for job "


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker that stopped. ``exit_code`` follows subprocess: negative means killed by that signal."""

    worker_id: str
    exit_code: int | None
    reason: str = ""
    log_tail: str = ""
    #: stopped from outside (spot interruption, a user's StopTask): not the worker's own failure
    interrupted: bool = False

    @property
    def got_ready(self) -> bool:
        """Had the worker connected to its job (its output says so) before it stopped? One that had is not
        a start-up failure, however it ended."""
        return READY_LINE in self.log_tail


@runtime_checkable
class Launcher(Protocol):
    """Starts and stops workers and reports the ones that stopped."""

    def start(self, count: int) -> list[str]: ...

    def stop(self, worker_ids: Sequence[str] | None = None) -> None: ...

    def poll(self) -> list[WorkerExit]:
        """Workers that stopped since the last call."""
        ...

    def running(self) -> int: ...


@dataclass
class JobResources:
    """What one job uses on the client side."""

    store: Store
    tasks: Queue
    results: Queue
    launcher: Launcher
    #: where the queue puts tasks delivered too often (None: the backend has none)
    dead_letters: Queue | None = None
    #: the task queue moves a message to ``dead_letters`` once received this many times; a message found
    #: there with a lower count was put there by someone else and is not acted on
    dead_letter_after: int = 0


@dataclass
class WorkerSide:
    """What a worker uses; built from its environment by ``Backend.connect_worker``."""

    store: Store
    tasks: Queue
    results: Queue
    parent_pid: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Backend(abc.ABC):
    """A named bundle of Store + Queue + Launcher."""

    name: ClassVar[str]
    #: backend-specific parameters accepted by Executor(...)
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: largest message the queue carries; bigger payloads go through the store
    max_message_bytes: ClassVar[int] = 256 * 1024
    #: how long one task (chunk of items) should run: long enough to hide the queue's latency
    target_task_seconds: ClassVar[float] = 1.0
    #: lease length; workers extend it while they run a task
    lease_seconds: float = 60.0
    #: how long the collector waits on the result queue per receive (long polling)
    result_wait: ClassVar[float] = 0.2
    #: how many workers start with the job (the rest start as work arrives)
    start_eagerly: ClassVar[bool] = True
    #: seconds between a worker's looks at the job's control record (stop flag, client heartbeat)
    control_period: float = 5.0
    #: the task queue reports which worker took each task (it is LeaseReporting), so workers do
    #: not announce the tasks they start
    reports_leases: ClassVar[bool] = False

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    @abc.abstractmethod
    def open_job(self, job_id: str, key: bytes, worker_env: WorkerEnv) -> JobResources:
        """Create the job's store prefix, queues and launcher. Workers get ``worker_env``, with what the backend
        adds (where to connect), as their environment: written by its ``to_environ()``."""

    @abc.abstractmethod
    def close_job(self, resources: JobResources, *, keep: bool = False) -> None:
        """Stop the job's workers and delete what it made (unless ``keep``)."""

    @classmethod
    @abc.abstractmethod
    def connect_worker(cls, env: WorkerEnv) -> WorkerSide:
        """Inside a worker: rebuild store and queues from the launcher's environment (``workerenv.from_environ``)."""

    @classmethod
    def import_path(cls) -> str:
        """``module:Class``, which a worker uses to load this backend (subclasses included)."""
        return f"{cls.__module__}:{cls.__qualname__}"

    @property
    def workers(self) -> int:
        """How many workers may run at once (fewer than asked when a quota is short)."""
        return self.options.workers

    @property
    def slots(self) -> int:
        """How many tasks run at once when every worker is up."""
        return self.workers * self.tasks_per_worker

    @property
    def tasks_per_worker(self) -> int:
        """How many tasks one worker runs at a time."""
        return 1

    @property
    def idle_timeout(self) -> float | None:
        """Seconds after which an idle worker retires (None: never)."""
        return self.options.idle_timeout

    @classmethod
    def defaults(cls) -> dict[str, object]:
        """Values for ``workers``, ``cpu``, ``memory``, ``idle_timeout`` when a call leaves them out."""
        return {}

    def cost(self, resources: JobResources) -> float:
        """USD this job has cost so far (0 where nothing is billed)."""
        return 0.0

    def hourly_cost(self, workers: int) -> float:
        """USD per hour of ``workers`` running workers."""
        return 0.0

    @property
    def cost_limits(self) -> tuple[float, float]:
        """``(max_cost_per_job, cost_alert_threshold)`` in USD; 0 means none."""
        return 0.0, 0.0

    @property
    def keeps_workers(self) -> bool:
        """Whether workers stay up after the job (debugging), rather than being told to stop."""
        return False

    @property
    def detached(self) -> bool:
        """Whether the job goes on after the client leaves (everything is queued at once)."""
        return False

    def job_record(self, resources: JobResources) -> dict[str, object]:
        """What a later client needs to reach this job's results (see cloudburst.attach)."""
        raise NotImplementedError(f"backend {self.name!r} cannot run detached jobs")

    @classmethod
    def forget_job(cls, record: Mapping[str, object]) -> None:
        """Stop a detached job's workers and delete its queues and data."""
        raise NotImplementedError(f"backend {cls.name!r} cannot run detached jobs")

    @property
    def client_timeout(self) -> float | None:
        """Seconds without the client's heartbeat after which workers stop (None: they do not look)."""
        return None
