"""Units of work: calls submitted one by one, ``map`` runs, and the tasks in flight that carry them.

A ``SubmitItem`` is one ``submit`` call waiting to be sent; a ``MapRun`` is one ``map``
call whose result slots fill as chunks return; a ``Task`` is what one queue message
carries (a chunk of a run, or a batch of submitted items) until its results come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteError
from ..protocol.blobs import BlobRef
from ..protocol.remote_exceptions import restore_exception
from ..protocol.task import Columns, ItemError

__all__ = ["MapRun", "SubmitItem", "Task", "rebuild_exception", "span"]


# ---------------------------------------------------------------------------- work not yet dispatched


@dataclass(eq=False)
class SubmitItem:
    fn: Callable[..., Any]
    fn_ref: BlobRef
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future[Any]
    index: int  # unique in the job (detached records key results by it)
    label: int  # what the user calls it: the how-manyth submit, from 0


class MapRun:
    """One ``map`` call: its calls, and result slots filled as chunks come back."""

    def __init__(
        self,
        fn: Callable[..., Any],
        fn_ref: BlobRef,
        calls: Columns,
        base_index: int,
        chunksize: int | None,
    ) -> None:
        self.fn = fn
        self.fn_ref = fn_ref
        self.calls = calls  # one column per argument position
        self.base_index = base_index
        self.chunksize = chunksize
        self.next_pos = 0  # first call not yet dispatched
        self.values: list[Any] = [None] * len(calls)
        self.filled = bytearray(len(calls))  # 1 where a value or an error has come back
        self.errors: dict[int, BaseException] = {}
        self.ready_upto = 0  # every slot below this is filled
        self.done = 0
        self.cancelled = False
        self._finished_spans: dict[int, int] = {}
        self.cond = threading.Condition()
        self.on_progress: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self.calls)

    def fill(self, start: int, values: Sequence[Any], errors: dict[int, BaseException]) -> None:
        with self.cond:
            self.values[start : start + len(values)] = values
            self.filled[start : start + len(values)] = b"\x01" * len(values)
            for pos, exc in errors.items():
                self.errors[start + pos] = exc
            self.done += len(values)
            self._finished_spans[start] = start + len(values)
            while self.ready_upto in self._finished_spans:
                self.ready_upto = self._finished_spans.pop(self.ready_upto)
            self.cond.notify_all()
        if self.on_progress is not None:
            self.on_progress(len(values))

    def finished_values(self) -> dict[int, Any]:
        """Position → value of every call that has come back without an error, and only those."""
        with self.cond:
            return {pos: self.values[pos] for pos, done in enumerate(self.filled) if done and pos not in self.errors}

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()


# ---------------------------------------------------------------------------- work in flight


@dataclass(eq=False)
class Task:
    task_id: int
    fn_ref: BlobRef
    indices: Sequence[int]
    run: MapRun | None = None
    start: int = 0  # position of the first call in run.calls
    items: list[SubmitItem] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)  # every worker that took it, latest last
    receipt: str = ""  # the queue receipt of its latest delivery
    attempt: int = 0
    rejections: int = 0  # times a worker refused a message naming this task (a failed seal check)
    dispatched_at: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> Sequence[int]:
        """The items as the user counts them: positions in their ``map`` call, or submit ordinals. Workers
        see these (output prefixes, seeds, error messages); ``indices`` stay unique across the job."""
        if self.run is not None:
            return range(self.start, self.start + len(self))
        return [item.label for item in self.items]

    def finish(self, values: Sequence[Any], errors: dict[int, BaseException], only: Iterable[int] | None = None) -> int:
        """Hand results to the run's slots or the items' futures: every position, or ``only`` those (their
        errors given). Returns how many submitted items this resolved (a run reports its own progress)."""
        if self.run is not None:
            if only is not None:
                for pos in only:
                    self.run.fill(self.start + pos, [None], {0: errors[pos]})
            else:
                self.run.fill(self.start, values, errors)
            return 0
        positions = range(len(self.items)) if only is None else list(only)
        for pos in positions:
            future = self.items[pos].future
            try:
                if pos in errors:
                    future.set_exception(errors[pos])
                else:
                    future.set_result(values[pos])
            except InvalidStateError:
                pass  # cancelled meanwhile
        return len(positions)

    def fail(self, exc: BaseException) -> int:
        """Every item fails with ``exc``; returns how many submitted items this resolved."""
        return self.finish([None] * len(self), dict.fromkeys(range(len(self)), exc))


def rebuild_exception(error: ItemError, *, where: str) -> BaseException:
    """The exception a call raised, as itself with its remote traceback, or a RemoteError."""
    try:
        exc = restore_exception(error.pickled, error.type_name, error.message, error.traceback)
    except Exception:  # never let one odd exception leave the futures of its task unresolved
        exc = None
    if exc is None:
        exc = RemoteError(
            f"{error.type_name}: {error.message} (the exception could not be sent back as itself)",
            type_name=error.type_name,
            remote_traceback=error.traceback,
        )
    if hasattr(exc, "add_note"):
        exc.add_note(f"cloudburst: raised in {where}")
    return exc


def span(indices: Sequence[int]) -> str:
    """Item indices for a message: ``3..7`` for a range, else the first few."""
    if isinstance(indices, range):
        return str(indices.start) if len(indices) == 1 else f"{indices.start}..{indices.stop - 1}"
    items = list(indices)
    return ", ".join(map(str, items[:5])) + (" ..." if len(items) > 5 else "")
