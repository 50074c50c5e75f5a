"""What travels through the queues: tasks out, results and notices back.

Every message is ``seal(kind, header + pickle)`` (see ``sealing.seal``): sealed for its job, under a
unique message id, with the task id as an 8-byte header that the client reads from a lease report
after checking the seal, without unpickling. Tasks, results and notices travel as tuples of plain
values (``_flat`` / ``_rebuild``): pickle then loads no class by name, which makes the messages sent
and read on every task several times cheaper to load than the dataclasses themselves.

=====  ==============  ===========================================
kind   queue           meaning
=====  ==============  ===========================================
``T``  tasks           a chunk of calls of one function
``R``  results         the outcome of every call in a task
``S``  results         a worker started tasks (for crash attribution)
``X``  results         a worker refused a message on the tasks queue that failed its check (names no task)
``D``  results         a worker process died inside a running machine (a WorkerExit)
``W``  results         nothing: the client wakes its own collector's long poll when it closes
``C``  store           a control record (``control/<name>``): the client's heartbeat and stop flag, a
                       cancel marker; JSON, sealed and bound to its name, so that a forged or moved
                       record is ignored
=====  ==============  ===========================================

Replays and redeliveries (the contract)
---------------------------------------
A queue may deliver a message again: its lease ran out (its worker died or stalled), or the queue
delivered a duplicate. Someone able to write to a queue may also send a copy of a sealed message
(a *replay*). Both carry the same message id, and are told apart by what the reader has done:

* A worker runs a task message unless it has *finished* that message id itself (result sent). So a
  redelivery after a worker died runs (that worker finished nothing), and a copy of a message this
  worker finished is acknowledged and dropped: its result is already on its way. A worker remembers
  its last ``WORKER_MEMORY`` finished ids; a copy that escapes that memory, or is taken by another
  worker, may run again, but its result names a task the client has finished, so it is dropped there.
* The client handles each message id on the results queue once (its last ``CLIENT_MEMORY`` ids),
  and beyond that memory relies on state: a result for a finished task is dropped, a started notice
  is taken only when its delivery count is newer than the task's, a death notice once per worker.
* A message that fails its check (forged, tampered with, sealed for another job, another wire format)
  is never unpickled and names no task: it is counted against its queue (a worker reports one on the
  tasks queue with an ``X`` notice), and the job stops with ``ForgedMessagesError`` when they keep coming.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PayloadAuthenticationError
from .blobs import BlobRef, Packed, pickled_as_call
from .sealing import seal, unseal

if TYPE_CHECKING:
    from ..backends.base import Queue

__all__ = [
    "CLIENT_MEMORY",
    "WORKER_MEMORY",
    "Columns",
    "DeadLetter",
    "ItemError",
    "Notice",
    "Opened",
    "OutputEvent",
    "RecentIds",
    "ResultMessage",
    "TaskMessage",
    "decode",
    "encode",
    "open_control",
    "open_message",
    "read_dead_letters",
    "seal_control",
    "sealed_task_id",
]

TASK = b"T"
RESULT = b"R"
STARTED = b"S"
REJECTED = b"X"
DIED = b"D"
CONTROL = b"C"
WAKE = b"W"
_HEADER = struct.Struct("<Q")
_COUNT = struct.Struct(">Q")
#: Message ids a worker remembers having finished (~0.5 MB). Safe to bound: a copy that escapes it runs
#: again at worst, and the client drops its result (its task is finished), so nothing counts twice.
WORKER_MEMORY = 4096
#: Message ids the client remembers having handled (~4 MB). Beyond it, state decides (see the contract).
CLIENT_MEMORY = 1 << 15


class Columns:
    """The calls of a map chunk, one sequence per argument position (``zip`` of the columns).

    Pickling columns (a ``range`` slice stays a ``range``) is many times cheaper than
    pickling one tuple per item; the worker iterates them back into argument tuples.
    """

    __slots__ = ("cols",)

    def __init__(self, cols: tuple[Sequence[object], ...]) -> None:
        self.cols = cols

    def __len__(self) -> int:
        return len(self.cols[0]) if self.cols else 0

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        return zip(*self.cols, strict=True)

    def __getitem__(self, pos: int) -> tuple[object, ...]:
        return tuple(col[pos] for col in self.cols)

    def slice(self, start: int, stop: int) -> Columns:
        return Columns(tuple(col[start:stop] for col in self.cols))

    def __reduce__(self) -> tuple[object, ...]:
        return (Columns, (self.cols,))


@pickled_as_call
@dataclass(frozen=True, slots=True)
class TaskMessage:
    """A chunk of calls of one function. ``indices[k]`` is the item index of call ``k``."""

    task_id: int
    function: BlobRef
    calls: Packed  # Columns or a list of args tuples, or of (args, kwargs) pairs when with_kwargs
    indices: Sequence[int]
    with_kwargs: bool = False
    seed: int | None = None
    max_attempts: int = 3
    log_level: int = 30


@pickled_as_call
@dataclass(frozen=True, slots=True)
class ItemError:
    """An exception raised by one call, pickled with its traceback when possible."""

    pickled: bytes | None
    type_name: str
    message: str
    traceback: str


#: (item index, kind, payload): kind is "stdout", "stderr", "log" (dict of a LogRecord) or
#: "warning" (category name, message, filename, lineno, pickled category or None)
OutputEvent = tuple[int, str, object]


@pickled_as_call
@dataclass(frozen=True, slots=True)
class ResultMessage:
    """The outcome of one task. ``failure`` set means every call failed with it."""

    task_id: int
    worker_id: str
    attempt: int
    values: Packed | None = None  # list of return values; None where errors has an entry
    errors: dict[int, ItemError] = field(default_factory=dict)  # position in chunk -> error
    failure: ItemError | None = None
    compute_seconds: float = 0.0
    events: list[OutputEvent] = field(default_factory=list)
    #: the calls could not be loaded together: send them again in smaller tasks to find the bad one
    split: bool = False


@pickled_as_call
@dataclass(frozen=True, slots=True)
class Notice:
    """A worker's word about tasks it took (``S``) or refused (``X``)."""

    task_ids: tuple[int, ...]
    worker_id: str
    attempts: tuple[int, ...] = ()
    detail: str = ""
    #: the queue receipts of the tasks, so the client can release them at once if this worker dies
    receipts: tuple[str, ...] = ()


def encode(key: bytes, kind: bytes, task_id: int, message: object, *, job: bytes) -> bytes:
    """Seal ``message`` for job tag ``job`` under a fresh message id."""
    body = _HEADER.pack(task_id) + pickle.dumps(_flat(kind, message), protocol=5)
    return seal(key, kind, body, job=job, message_id=_MessageIds.next())


class _MessageIds:
    """Unique message ids without a system call each: this process's random 8 bytes, then a count.

    An id needs to be unique, not secret (the seal makes it unforgeable), and readers drop a second
    message with the same id. A forked child draws its own random part, so parent and child never
    share one."""

    _lock = threading.Lock()
    _count = itertools.count()
    _prefix = os.urandom(8)

    @classmethod
    def next(cls) -> bytes:
        with cls._lock:  # next() on a shared count is not atomic in every Python
            n = next(cls._count)
        return cls._prefix + _COUNT.pack(n)

    @classmethod
    def renew(cls) -> None:
        cls._lock = threading.Lock()
        cls._count = itertools.count()
        cls._prefix = os.urandom(8)


os.register_at_fork(after_in_child=_MessageIds.renew)


@dataclass(frozen=True, slots=True)
class Opened:
    """An authenticated, unpickled message and its unique id."""

    kind: bytes
    message_id: bytes
    message: object


def open_message(key: bytes, data: bytes, *, job: bytes) -> Opened:
    """Authenticate, then unpickle. Raises PayloadAuthenticationError before any unpickling."""
    sealed = unseal(key, data, job=job)
    # The body was sealed by a holder of the job key: plain values (or our own message classes) are
    # inside; user objects are nested as pickled bytes, loaded later by the Unpacker.
    loaded = pickle.loads(sealed.body[_HEADER.size :])
    return Opened(sealed.kind, sealed.message_id, _rebuild(sealed.kind, loaded))


# ---------------------------------------------------------------------------- messages as plain values


def _ref(ref: BlobRef | None) -> tuple[str, int, bool] | None:
    return None if ref is None else (ref.digest, ref.size, ref.zstd)


def _packed(packed: Packed | None) -> tuple[object, ...] | None:
    if packed is None:
        return None
    return (packed.inline, _ref(packed.blob), tuple(map(_ref, packed.buffers)))


def _error(error: ItemError | None) -> tuple[object, ...] | None:
    return None if error is None else (error.pickled, error.type_name, error.message, error.traceback)


def _flat(kind: bytes, message: object) -> object:
    """A task, result or notice as a tuple of plain values (``_rebuild`` reverses it); anything else as is."""
    if kind == TASK and isinstance(message, TaskMessage):
        m = message
        fields = (m.task_id, m.function.digest, m.function.size, m.function.zstd, _packed(m.calls), m.indices)
        return (*fields, m.with_kwargs, m.seed, m.max_attempts, m.log_level)
    if kind == RESULT and isinstance(message, ResultMessage):
        r = message
        errors = {pos: _error(error) for pos, error in r.errors.items()}
        head = (r.task_id, r.worker_id, r.attempt, _packed(r.values), errors, _error(r.failure))
        return (*head, r.compute_seconds, r.events, r.split)
    if kind in (STARTED, REJECTED) and isinstance(message, Notice):
        return (message.task_ids, message.worker_id, message.attempts, message.detail, message.receipts)
    return message


def _unpacked(flat: Any) -> Packed:
    inline, blob, buffers = flat
    return Packed(inline, None if blob is None else BlobRef(*blob), tuple(BlobRef(*b) for b in buffers))


def _unerror(flat: Any) -> ItemError | None:
    return None if flat is None else ItemError(*flat)


def _rebuild(kind: bytes, loaded: object) -> object:
    """The message ``_flat`` made plain; a malformed one (only a holder of the job key can seal one) is refused
    like a forged one."""
    if type(loaded) is not tuple or kind not in (TASK, RESULT, STARTED, REJECTED):
        return loaded
    try:
        if kind == TASK:
            task_id, digest, size, zstd, calls, indices, *rest = loaded
            return TaskMessage(task_id, BlobRef(digest, size, zstd), _unpacked(calls), indices, *rest)
        if kind == RESULT:
            task_id, worker_id, attempt, values, errors, failure, *rest = loaded
            errors = {pos: _unerror(error) for pos, error in errors.items()}
            values = None if values is None else _unpacked(values)
            return ResultMessage(task_id, worker_id, attempt, values, errors, _unerror(failure), *rest)
        return Notice(*loaded)
    except (TypeError, ValueError, AttributeError) as exc:
        raise PayloadAuthenticationError(
            f"a sealed message of kind {kind!r} is malformed ({exc}); it was dropped"
        ) from exc


def decode(key: bytes, data: bytes, *, job: bytes) -> tuple[bytes, object]:
    """``(kind, message)`` of a sealed message; see :func:`open_message`."""
    opened = open_message(key, data, job=job)
    return opened.kind, opened.message


def sealed_task_id(key: bytes, data: bytes, *, job: bytes) -> int | None:
    """The task id of a sealed task message, or None when it fails its check (nothing is unpickled)."""
    try:
        sealed = unseal(key, data, job=job)
    except PayloadAuthenticationError:
        return None
    if sealed.kind != TASK or len(sealed.body) < _HEADER.size:
        return None
    value: int = _HEADER.unpack_from(sealed.body)[0]
    return value


def seal_control(key: bytes, name: str, record: dict[str, object], *, job: bytes) -> bytes:
    """The bytes of control record ``control/<name>``: sealed with the job key, and naming itself so
    that it cannot be copied to another record's place."""
    return seal(key, CONTROL, json.dumps({**record, "name": name}).encode(), job=job)


def open_control(key: bytes, name: str, data: bytes, *, job: bytes | None = None) -> dict[str, object]:
    """Read control record ``control/<name>``; raises PayloadAuthenticationError for a forged, altered
    or misplaced one, which the reader must then ignore. ``job`` None: only for a reader that found the
    key by the job's own name."""
    sealed = unseal(key, data, job=job)
    record = json.loads(bytes(sealed.body)) if sealed.kind == CONTROL else None
    if not isinstance(record, dict) or record.get("name") != name:
        raise PayloadAuthenticationError(f"control record {name!r} is sealed as another record; it was ignored")
    return record


class RecentIds:
    """The last ``cap`` message ids handled, to drop a replayed or duplicated copy; thread-safe."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._ids: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, message_id: object) -> bool:
        with self._lock:
            return message_id in self._ids

    def add(self, message_id: bytes) -> bool:
        """Remember ``message_id``; False when it was remembered already."""
        with self._lock:
            if message_id in self._ids:
                return False
            self._ids[message_id] = None
            if len(self._ids) > self._cap:
                self._ids.popitem(last=False)
            return True


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A sealed task message found in the dead-letter queue, and how often it had been delivered."""

    task: TaskMessage
    deliveries: int
    receipt: str


def read_dead_letters(key: bytes, queue: Queue, *, job: bytes) -> list[DeadLetter]:
    """Task messages a queue gave up on. Messages that fail their seal are deleted unread; the caller
    deletes (acks) the others once it has dealt with them, and may leave one for a later look."""
    messages = queue.receive(10, wait=0)
    found, junk = [], []
    for message in messages:
        try:
            kind, task = decode(key, message.body, job=job)
        except PayloadAuthenticationError:
            junk.append(message.receipt)
            continue
        if kind == TASK and isinstance(task, TaskMessage):
            found.append(DeadLetter(task, message.receive_count, message.receipt))
        else:
            junk.append(message.receipt)
    if junk:
        queue.ack(junk)
    return found
