"""The three contracts every backend supplies, and the bundle that names them.

::

    Store     blobs by key            put / get / get_file / exists / delete_prefix
    Queue     leased messages         send_batch / receive / ack / extend / purge
    Launcher  worker processes/tasks  start / stop / poll / running

A queue that lives in the client's process may offer more: ``Subscribable``
(hand each message to the client as it is sent, no receive loop) and
``LeaseReporting`` (say which worker took which task; see ``reports_leases``).
A worker's task queue may be ``Finishing`` (a result, its acknowledgement and the
next receive in one exchange).

A ``Backend`` builds them for one job on the client side (``open_job``) and
again inside a worker (``connect_worker``) from the environment the launcher
gave it. The core never asks which backend it is talking to.

The contract (each rule is repeated where it applies; ``cloudburst.testing.BackendContract``
checks them; ``docs/backends.md`` shows how to write a backend):

* **Errors.** ``Store.get`` and ``Store.get_file`` raise ``FileNotFoundError`` for a missing key: the
  worker reads "no control record" and "no cancel marker" that way. Any other failure raises; the core
  waits out and retries only what ``Backend.is_transient(exc)`` calls transient (throttling, a 5xx, a
  dropped connection), and fails the work for anything else. Inside a worker, a queue whose job was
  deleted raises ``EOFError``/``ConnectionError``, or an error the backend's ``job_is_gone`` recognises
  (AWS: "the queue or bucket does not exist"): the worker takes that as "the job ended" and exits 0.
* **Leases, at least once.** ``receive`` leases each message for ``Backend.lease_seconds``; a message
  not acknowledged before its lease ends is delivered again, its ``receive_count`` one higher. Workers
  extend the leases of running tasks every ``lease_seconds / 3``. ``extend(receipts, 0)`` releases a
  lease now: the core does it for the tasks of a worker that died, so they run again at once. ``ack``
  and ``extend`` ignore receipts that are unknown, acknowledged or expired (both are idempotent).
  Duplicates are allowed (the core drops copies by message id); losing a message is not.
* **Worker ids.** ``Launcher.start`` returns ids unique within the job and never reused, without a
  ``.``; the worker learns its own from ``WorkerEnv.worker_id`` (or ``WorkerSide.extra["worker_id"]``)
  and it must equal the launcher's, since the core matches task reports to exits by it. A worker with
  several slots (``tasks_per_worker > 1``) runs a supervisor whose child workers are ``<id>.<k>``; the
  core treats ``<id>`` as their machine: the launcher reports the machine's exit, the supervisor
  reports each child's death on the results queue, and a machine's exit blames its children's tasks.
* **Why a worker stopped.** ``Launcher.poll`` reports each stopped worker once, as a ``WorkerExit``:
  ``exit_code`` (0: it retired, idle or because the job ended: not a death; negative: killed by that
  signal; 137: out of memory; 78: its environment could not be installed), a one-line ``reason`` (the
  last ``EXIT_REASON_PREFIX`` line of the worker's output when there is one, see ``reason_in_log``),
  the tail of its output (``log_tail``; it holds ``READY_LINE`` once the worker connected: a worker
  without it that exits non-zero is a start-up failure, and three in a row stop the job) and
  ``interrupted`` (stopped from outside: not the worker's fault).
* **Capacity.** ``workers`` workers at most run at once, each running ``tasks_per_worker`` tasks;
  ``slots`` is their product. The core keeps about ``2 * slots`` tasks queued and cuts chunks from it.
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
    from .cachebase import CacheSite

__all__ = [
    "Backend",
    "Finishing",
    "JobResources",
    "Launcher",
    "LeaseReporting",
    "Message",
    "Queue",
    "Store",
    "Subscribable",
    "WorkerExit",
    "WorkerPrice",
    "WorkerSide",
    "reason_in_log",
]


@runtime_checkable
class Store(Protocol):
    """Blobs by key. Keys are ``/``-separated paths below the job's prefix.

    The core writes content-addressed blobs (arguments, functions, big results) and sealed control
    records (``control/state``, ``control/cancelled/<task id>``) that it overwrites while workers read
    them. Every method may be called from several threads at once.

    Optional: ``copy_from(src, src_key, dst_key) -> bool`` copies a blob of another store here without the
    bytes passing through the caller (S3: CopyObject within a bucket; local: a hard link), and returns False
    when it cannot reach ``src``; ``stages.transfer.copy_blob`` then copies through the client.
    """

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key``, replacing what was there. Atomic: a reader sees the old blob or
        the whole new one, never part of it."""
        ...

    def get(self, key: str) -> bytes:
        """The blob under ``key``. Raises ``FileNotFoundError`` when there is none (not a backend error)."""
        ...

    def get_file(self, key: str, cache_dir: Path) -> Path:
        """A local file holding the blob (downloaded into ``cache_dir`` if need be). The caller only reads
        it. Raises ``FileNotFoundError`` when there is no such blob."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key`` (the core skips uploading what exists). Never raises
        for a missing key."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every blob whose key starts with ``prefix`` (``""``: all of the job's). Deleting what is
        not there is not an error."""
        ...


@dataclass(frozen=True, slots=True)
class Message:
    """One leased message. ``receive_count`` counts deliveries, this one included."""

    receipt: str
    body: bytes
    receive_count: int


@runtime_checkable
class Queue(Protocol):
    """At-least-once delivery with leases: an unacknowledged message comes back when its lease ends.

    Bodies are opaque bytes (sealed by the core) and must arrive byte for byte. Order is roughly
    first in, first out; nothing depends on it. One queue object is shared by several threads (the
    client's dispatcher and collector; a worker's loop and its lease keeper).
    """

    def send_batch(self, bodies: Sequence[bytes]) -> None:
        """Queue every body (any number; the queue splits them into batches it can carry). Each is at
        most ``Backend.max_message_bytes``. Raises when a body could not be queued."""
        ...

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        """Lease up to ``max_messages`` waiting messages, waiting up to ``wait`` seconds for the first
        (``[]`` when none came). Each is leased for ``Backend.lease_seconds``; ``receive_count`` is 1 on
        the first delivery and one more on each redelivery."""
        ...

    def ack(self, receipts: Sequence[str]) -> None:
        """Delete the messages for good. Idempotent: unknown, expired or acknowledged receipts are
        ignored, and so is an empty list."""
        ...

    def extend(self, receipts: Sequence[str], seconds: float) -> None:
        """End these leases ``seconds`` from now. ``seconds=0`` releases them: the messages are delivered
        again at once. Receipts no longer leased are ignored."""
        ...

    def purge(self) -> None:
        """Drop every message waiting for delivery (leased ones may be kept)."""
        ...


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


@runtime_checkable
class Finishing(Protocol):
    """Optional, for a worker's task queue: finish a task and take the next in one exchange.

    ``finish_and_receive`` must do what ``results.send_batch(bodies)``, ``self.ack(receipts)`` and
    ``self.receive(max_messages, wait)`` do, in that order as far as anyone can tell: a result is never lost
    to an acknowledgement that went first.
    """

    def finish_and_receive(
        self, results: Queue, bodies: Sequence[bytes], receipts: Sequence[str], max_messages: int, wait: float
    ) -> list[Message]: ...


#: what a worker writes to its output once it has connected to its job (``cloudburst.worker.main``)
READY_LINE = ": started for job "
#: a worker's last line before it exits on purpose says why: ``cloudburst-worker: exit reason: idle for 60 s``
EXIT_REASON_PREFIX = "cloudburst-worker: exit reason: "


def reason_in_log(log_tail: str) -> str | None:
    """The reason a worker gave for exiting (its last ``EXIT_REASON_PREFIX`` line), or None when it gave
    none (then a launcher describes the exit code, e.g. "killed by SIGKILL")."""
    for line in reversed(log_tail.splitlines()):
        if line.startswith(EXIT_REASON_PREFIX):
            return line[len(EXIT_REASON_PREFIX) :]
    return None


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker that stopped. ``exit_code`` follows subprocess: negative means killed by that signal, 0
    that it retired on its own (idle, or the job ended), None that nobody knows. ``reason`` is one line
    for people; ``log_tail`` the end of its output (about 2,000 characters), holding ``READY_LINE`` if the
    worker had connected to its job."""

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
    """Starts and stops workers and reports the ones that stopped.

    Each worker runs ``python -m cloudburst.worker`` (or the loop in another form) with the environment
    ``open_job`` was given (``WorkerEnv.to_environ()``), with ``backend`` (``Backend.import_path()``), its
    ``worker_id`` and whatever ``connect_worker`` reads set.
    """

    def start(self, count: int) -> list[str]:
        """Start ``count`` workers (or fewer, when a quota says no) and return their ids: unique within
        the job, never reused, without a ``.`` (``parent.k`` names a child of a multi-slot worker)."""
        ...

    def stop(self, worker_ids: Sequence[str] | None = None) -> None:
        """Stop these workers (None: all of them; the job is ending). Stopping a stopped worker is not an
        error. Stopped workers are still reported by ``poll``."""
        ...

    def poll(self) -> list[WorkerExit]:
        """Workers that stopped since the last call, each reported exactly once. Called about every
        0.2 s by the client: cheap, or rate-limited inside."""
        ...

    def running(self) -> int:
        """Workers started and not yet reported stopped (starting ones included: the core starts
        ``wanted - running()`` more)."""
        ...


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
    """What a worker uses; built from its environment by ``Backend.connect_worker``. ``parent_pid``: the
    worker exits when that process is gone (None: it does not look)."""

    store: Store
    tasks: Queue
    results: Queue
    parent_pid: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerPrice:
    """What one worker costs: USD per hour, where the price came from, the least time billed for a worker."""

    hourly: float
    source: str
    minimum_seconds: float = 0.0


class Backend(abc.ABC):
    """A named bundle of Store + Queue + Launcher.

    Registered by name with ``cloudburst.backends.register`` (or the ``cloudburst.backends`` entry
    point); a worker loads it again by ``import_path()``. One instance serves one job in the client.
    Errors its store, queues and launcher raise are retried by the core only when ``is_transient``
    says they are worth waiting out.
    """

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
        """Create the job's store prefix, queues and launcher; start no worker (the core does).

        ``worker_env`` (``protocol.workerenv.WorkerEnv``) holds what the worker loop reads (job id and key,
        lease, idle and client timeouts, control period) and the user's ``env``. Every worker gets it as its
        environment, written by ``to_environ()``, with what the backend adds: its worker id and what
        ``connect_worker`` needs (``backend_args`` carries a backend's own connection details). The key is
        secret: it reaches workers by a private channel (their environment; a secret store). Optional fields
        a worker honours: ``parent_pid`` (it exits when that process ends; on Linux the kernel kills it when
        the *thread* that started it ends), ``sys_path``, ``memory_limit_mib``, ``worker_slots``. On failure,
        undo what was made and raise."""

    @abc.abstractmethod
    def close_job(self, resources: JobResources, *, keep: bool = False) -> None:
        """Stop the job's workers (all of them, not only the running ones) and delete its queues and
        stored data, unless ``keep``: then the data and queues stay for a later look (``cloudburst.attach``,
        debugging) and only the client's own resources are released. Either way, wake anything blocked
        in ``receive`` on the job's queues. Called once, possibly right after ``open_job`` (when the core
        could not write its first control record), and from any thread."""

    @classmethod
    @abc.abstractmethod
    def connect_worker(cls, env: WorkerEnv) -> WorkerSide:
        """Inside a worker: rebuild store and queues from the launcher's environment alone
        (``workerenv.from_environ``; no state from the client's process). ``extra`` may carry ``worker_id``
        and ``job_key`` when the environment does not (e.g. read from the platform's metadata or a secret
        store), and ``dead_letters`` (a Queue)."""

    @classmethod
    def open_cache(cls, options: Mapping[str, object], namespace: str) -> CacheSite:
        """The stage cache this backend's runs share for ``namespace`` (``backends.cachebase``), from settings and
        ``options`` alone: no backend object is made, and nothing is asked of the cloud until the cache is read.
        Default: a folder on this machine, ``<cache dir>/stages/<namespace>/``."""
        from .localcache import open_local_cache  # not at the top: localcache builds on local, which imports base

        return open_local_cache(namespace)

    @classmethod
    def import_path(cls) -> str:
        """``module:Class``, which a worker uses to load this backend (subclasses included)."""
        return f"{cls.__module__}:{cls.__qualname__}"

    @property
    def workers(self) -> int:
        """How many workers may run at once (fewer than asked when a quota is short). The core never asks
        the launcher for more."""
        return self.options.workers

    @property
    def slots(self) -> int:
        """How many tasks run at once when every worker is up; the core sizes chunks and queues about
        ``2 * slots`` tasks ahead from it."""
        return self.workers * self.tasks_per_worker

    @property
    def tasks_per_worker(self) -> int:
        """How many tasks one worker runs at a time. Above 1, each worker is a supervisor of that many
        child workers named ``<worker id>.<k>`` (its launcher sets ``WorkerEnv.slots``)."""
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

    @classmethod
    def worker_price(
        cls, cpu: float, memory_mib: int | None, *, region: str | None = None, arch: str = "x86_64", spot: bool = False
    ) -> WorkerPrice:
        """The price of one worker of ``cpu`` vCPUs and ``memory_mib`` MiB (None: the backend's default), before a
        job starts (``cloudburst.estimate``); raises ConfigurationError for a size the backend does not offer."""
        return WorkerPrice(0.0, "nothing is billed")

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

    @classmethod
    def is_transient(cls, exc: BaseException) -> bool:
        """Whether ``exc`` from this backend's store, queues or launcher is worth waiting out (throttling, a
        dropped connection, a brief outage) rather than failing the job. The client and the workers back off
        and try again on these; anything else fails at once. Default: ``ConnectionError`` and ``TimeoutError``."""
        return isinstance(exc, (ConnectionError, TimeoutError))

    @classmethod
    def job_is_gone(cls, exc: BaseException) -> bool:
        """Whether ``exc`` says the job's queues or store were deleted (the job ended while a worker ran): the
        worker then leaves quietly, with exit code 0. Default: never."""
        return False

    @property
    def client_timeout(self) -> float | None:
        """Seconds without the client's heartbeat after which workers stop (None: they do not look)."""
        return None
