"""What travels through the queues: tasks out, results and notices back.

Every message is ``seal(kind, header + pickle)``: the header is the task id as
8 plain bytes, so a message that fails its seal can still be *reported* against
its task without unpickling a byte of it.

=====  ==============  ===========================================
kind   queue           meaning
=====  ==============  ===========================================
``T``  tasks           a chunk of calls of one function
``R``  results         the outcome of every call in a task
``S``  results         a worker started tasks (for crash attribution)
``X``  results         a worker refused a task it could not authenticate
``D``  results         a worker process died inside a running machine (a WorkerExit)
``W``  results         nothing: the client wakes its own collector's long poll when it closes
``C``  store           a control record (``control/<name>``): the client's heartbeat and stop flag, a
                       cancel marker; JSON, sealed and bound to its name, so that a forged or moved
                       record is ignored
=====  ==============  ===========================================
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import PayloadAuthenticationError
from .serialize import MAGIC, BlobRef, Packed, pickled_as_call, seal, unseal

if TYPE_CHECKING:
    from .backends.base import Queue

__all__ = [
    "Columns",
    "DeadLetter",
    "ItemError",
    "Notice",
    "OutputEvent",
    "ResultMessage",
    "TaskMessage",
    "decode",
    "encode",
    "open_control",
    "peek_task_id",
    "read_dead_letters",
    "seal_control",
]

TASK = b"T"
RESULT = b"R"
STARTED = b"S"
REJECTED = b"X"
DIED = b"D"
CONTROL = b"C"
WAKE = b"W"
_HEADER = struct.Struct("<Q")


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


def encode(key: bytes, kind: bytes, task_id: int, message: object) -> bytes:
    body = _HEADER.pack(task_id) + pickle.dumps(message, protocol=5)
    return seal(key, kind, body)


def decode(key: bytes, data: bytes) -> tuple[bytes, object]:
    """Authenticate, then unpickle. Raises PayloadAuthenticationError before any unpickling."""
    kind, body = unseal(key, data)
    # The body was sealed by a holder of the job key: only our own message
    # classes and builtins are inside; user objects are nested as Packed bytes.
    return kind, pickle.loads(body[_HEADER.size :])


def seal_control(key: bytes, name: str, record: dict[str, object]) -> bytes:
    """The bytes of control record ``control/<name>``: sealed with the job key, and naming itself so
    that it cannot be copied to another record's place."""
    return seal(key, CONTROL, json.dumps({**record, "name": name}).encode())


def open_control(key: bytes, name: str, data: bytes) -> dict[str, object]:
    """Read control record ``control/<name>``; raises PayloadAuthenticationError for a forged, altered
    or misplaced one, which the reader must then ignore."""
    kind, body = unseal(key, data)
    record = json.loads(body) if kind == CONTROL else None
    if not isinstance(record, dict) or record.get("name") != name:
        raise PayloadAuthenticationError(f"control record {name!r} is sealed as another record; it was ignored")
    return record


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A sealed task message found in the dead-letter queue, and how often it had been delivered."""

    task: TaskMessage
    deliveries: int
    receipt: str


def read_dead_letters(key: bytes, queue: Queue) -> list[DeadLetter]:
    """Task messages a queue gave up on. Messages that fail their seal are deleted unread; the caller
    deletes (acks) the others once it has dealt with them, and may leave one for a later look."""
    messages = queue.receive(10, wait=0)
    found, junk = [], []
    for message in messages:
        try:
            kind, task = decode(key, message.body)
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


def peek_task_id(data: bytes) -> int | None:
    """The (unauthenticated) task id of a message, for reports and crash attribution only."""
    start = len(MAGIC) + 1 + 32
    if len(data) < start + _HEADER.size:
        return None
    value: int = _HEADER.unpack_from(data, start)[0]
    return value
