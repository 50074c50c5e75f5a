"""One task on a worker: load its function and its calls, run each call with its output captured and its
random seed set, then pack what they returned (a value that cannot be pickled becomes that item's error).

The worker loop (``loop.py``) authenticates the task message, runs it here, and sends the result.
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from .. import seeds
from ..core.packing import only_plain
from ..core.work import span
from ..errors import PayloadAuthenticationError, PicklingError, TaskExitError, UnpicklingError
from ..protocol.output import Capture
from ..protocol.remote_exceptions import pickle_exception
from ..protocol.serialize import Packer, Unpacker, describe
from ..protocol.task import ItemError, ResultMessage, TaskMessage
from . import context

__all__ = ["TaskRunner", "item_error"]


def item_error(exc: BaseException, skip_frames: int = 1) -> ItemError:
    """Describe an exception for the trip back: pickled so that it loads as its own type when it can be
    (see :mod:`cloudburst.protocol.remote_exceptions`), and always its type's name, message and traceback as text."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    exc.__traceback__ = tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__}: its str() failed>"
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return ItemError(pickle_exception(exc), name, message, text)


class TaskRunner:
    """Runs the calls of one task message and packs their results; the worker loop sends them."""

    def __init__(
        self, unpacker: Unpacker, packer: Packer, worker_id: str, check_memory_error: Callable[[BaseException], None]
    ) -> None:
        self.unpacker = unpacker
        self.packer = packer
        self.worker_id = worker_id
        #: the worker's look at a MemoryError: one from a refused allocation ends the worker as out of memory
        self.check_memory_error = check_memory_error
        self.capture = Capture()
        #: what the calls see of this worker (``context.current()``), set around them
        self.context = context.WorkerContext(packer.store, unpacker, packer, worker_id)

    def execute(self, task: TaskMessage, attempt: int) -> ResultMessage:
        def fail(exc: BaseException) -> ResultMessage:
            return ResultMessage(task.task_id, self.worker_id, attempt, failure=item_error(exc, 0))

        try:
            fn = self.unpacker.function(task.function)
        except Exception as exc:
            self.check_memory_error(exc)
            # A blob that fails its digest was altered in the store: say that, not "a module may be missing".
            altered = isinstance(exc, PayloadAuthenticationError)
            hint = "" if altered else " A module it needs may be missing on the worker."
            error = UnpicklingError(
                f"task {task.task_id}: the function could not be unpickled on the worker: "
                f"{type(exc).__name__}: {exc}.{hint}"
            )
            error.__cause__ = exc
            return fail(error)
        try:
            calls = self.unpacker.unpack(task.calls)
        except Exception as exc:
            self.check_memory_error(exc)
            error = UnpicklingError(
                f"task {task.task_id}: the arguments of items {span(task.indices)} could not be unpickled "
                f"on the worker: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            result = fail(error)
            return ResultMessage(
                task.task_id, self.worker_id, attempt, failure=result.failure, split=len(task.indices) > 1
            )
        values, errors, events, seconds = self.call_each(fn, calls, task)  # type: ignore[arg-type]
        packed, pack_errors = self.pack_values(values, task)
        errors.update(pack_errors)
        return ResultMessage(task.task_id, self.worker_id, attempt, packed, errors, None, seconds, events)

    def call_each(
        self, fn: Callable[..., Any], calls: list[Any], task: TaskMessage
    ) -> tuple[list[Any], dict[int, ItemError], list[Any], float]:
        values: list[Any] = []  # grows by one per call: its length is the running call's position
        errors: dict[int, ItemError] = {}
        started = time.perf_counter()
        self.capture.begin(task.log_level)
        context.set_current(self.context)
        seeds.enter_task(seeds.ItemCursor(task.indices, values))
        try:
            if task.seed is None and not task.with_kwargs:
                self._call_all(fn, calls, task, values, errors)
            else:
                self._call_one_by_one(fn, calls, task, values, errors)
        finally:
            seeds.leave_task()
            context.set_current(None)
            events = self.capture.end()
        return values, errors, events, time.perf_counter() - started

    def _call_all(
        self,
        fn: Callable[..., Any],
        calls: list[Any],
        task: TaskMessage,
        values: list[Any],
        errors: dict[int, ItemError],
    ) -> None:
        """Every call through ``itertools.starmap`` inside ``list.extend``: no Python step per call, which is
        most of a tiny call's cost. CPython's ``extend`` appends as it goes, so when a call raises, the calls
        before it are in ``values`` and its position is ``len(values)``; the rest go on from the same iterator."""
        remaining = iter(calls)
        while True:
            try:
                values.extend(itertools.starmap(fn, remaining))
                return
            except BaseException as exc:
                self._failed(exc, task, values, errors)

    def _call_one_by_one(
        self,
        fn: Callable[..., Any],
        calls: list[Any],
        task: TaskMessage,
        values: list[Any],
        errors: dict[int, ItemError],
    ) -> None:
        """Each call in turn: for a seeded task (random and numpy are reseeded before each) or keyword arguments."""
        seed, indices, with_kwargs = task.seed, task.indices, task.with_kwargs
        for pos, call in enumerate(calls):
            if seed is not None:
                seeds.seed_item(seed, indices[pos])
            try:
                values.append(fn(*call[0], **call[1]) if with_kwargs else fn(*call))
            except BaseException as exc:
                self._failed(exc, task, values, errors)

    def _failed(self, exc: BaseException, task: TaskMessage, values: list[Any], errors: dict[int, ItemError]) -> None:
        """Record the running call's exception as its item's error, in its place."""
        pos = len(values)
        index = task.indices[pos]
        if isinstance(exc, SystemExit):
            errors[pos] = item_error(TaskExitError(f"item {index} called sys.exit({exc.code!r})", exc.code), 0)
        else:
            self.check_memory_error(exc)  # past an RLIMIT_DATA limit: the worker ends here
            errors[pos] = item_error(exc)  # its traceback starts in the frame that made the call: skipped
            self.log_failure(task.task_id, index, errors[pos])
        values.append(None)

    def log_failure(self, task_id: int, index: int, error: ItemError) -> None:
        """Into this worker's own log (CloudWatch on Fargate), for `cloudburst logs`."""
        os.write(
            2, f"cloudburst-worker {self.worker_id}: task {task_id}, item {index} failed:\n{error.traceback}".encode()
        )

    def pack_values(self, values: list[Any], task: TaskMessage) -> tuple[Any, dict[int, ItemError]]:
        errors: dict[int, ItemError] = {}
        try:
            return self.packer.pack(values, plain=only_plain(values)), errors
        except Exception:
            pass
        for pos, value in enumerate(values):
            try:
                cloudpickle.dumps(value, protocol=5)
            except Exception as exc:
                error = PicklingError(
                    f"the result of item {task.indices[pos]} cannot be pickled: {describe(value)}: "
                    f"{type(exc).__name__}: {exc}. Return plain data (numbers, arrays, dicts) instead."
                )
                errors[pos] = item_error(error, 0)
                values[pos] = None
        return self.packer.pack(values), errors
