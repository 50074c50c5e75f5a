"""Turning planned tasks into sealed task messages, and finding the call that cannot be pickled."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import cloudpickle

from ..config.options import ExecutorOptions
from ..errors import PicklingError
from ..protocol.serialize import Packed, Packer, describe
from ..protocol.task import Columns, TaskMessage, encode
from .work import Task

__all__ = ["MAX_REMEMBERED", "Sealer", "only_plain", "only_scalars"]

#: task messages a Sealer remembers until their first lease report (a backlog is far smaller)
MAX_REMEMBERED = 4096


class Sealer:
    """Packs a task's calls (large repeated arguments go to the store once) and seals the message.

    With ``remember`` (a task queue that reports its leases, in this process), it keeps each sealed body
    until its first lease report, so that the report is read without checking the seal again: the very
    bytes sealed here need no check. A forged body is not among them and is checked as before.
    """

    def __init__(self, key: bytes, tag: bytes, packer: Packer, options: ExecutorOptions, *, remember: bool) -> None:
        self.key = key
        self.tag = tag
        self.packer = packer
        self.options = options
        # body -> task id; the bodies are the queue's own objects (no copy), dropped at their first lease
        self._sealed: dict[bytes, int] | None = {} if remember else None
        self._lock = threading.Lock()

    def seal(self, task: Task, calls: Any) -> bytes:
        """The sealed task message; raises what pickling a call raised."""
        message = TaskMessage(
            task.task_id,
            task.fn_ref,
            self.pack_calls(calls, task),
            task.labels,
            with_kwargs=task.run is None,
            seed=self.options.seed,
            max_attempts=self.options.retries + 1,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        body = encode(self.key, b"T", task.task_id, message, job=self.tag)
        if self._sealed is not None:
            with self._lock:
                self._sealed[body] = task.task_id
                if len(self._sealed) > MAX_REMEMBERED:  # never leased (purged, say): forget the oldest
                    del self._sealed[next(iter(self._sealed))]
        return body

    def sealed_here(self, body: bytes) -> int | None:
        """The task id of a message sealed here and not yet leased, forgotten now; None for any other body."""
        if self._sealed is None:
            return None
        with self._lock:
            return self._sealed.pop(body, None)

    def pack_calls(self, calls: Any, task: Task | None = None) -> Packed:
        """A map chunk's columns, or submitted ``(args, kwargs)`` pairs, packed."""
        if isinstance(calls, Columns):
            if all(map(only_scalars, calls.cols)):
                return self.packer.pack(calls)  # nothing large can repeat: skip the sharing scan
            return self.packer.pack(calls, shared=self.packer.shared_arguments([(c, None) for c in calls], task))
        if calls and isinstance(calls[0], tuple) and len(calls[0]) == 2 and isinstance(calls[0][1], dict):
            if only_scalars([v for args, kwargs in calls for v in (*args, *kwargs.values())]):
                return self.packer.pack(calls, plain=True)  # numbers and short strings: nothing to share
            shared = self.packer.shared_arguments(calls, task)  # submitted: (args, kwargs)
        else:
            shared = self.packer.shared_arguments([(c, None) for c in calls], task)
        return self.packer.pack(calls, shared=shared)

    def triage(self, task: Task, calls: Any) -> dict[int, BaseException]:
        """Which of a task's calls cannot be pickled: position → a PicklingError naming the object."""
        failures: dict[int, BaseException] = {}
        for pos, call in enumerate(calls):
            one = calls.slice(pos, pos + 1) if isinstance(calls, Columns) else [call]
            try:
                self.pack_calls(one)
            except Exception as exc:
                values = call if task.run is not None else (*call[0], *call[1].values())
                culprit = next((v for v in values if not _picklable(v)), None)
                what = describe(culprit) if culprit is not None else "an argument"
                error = PicklingError(
                    f"item {task.labels[pos]}: cannot send {what} to a worker: {type(exc).__name__}: {exc}. "
                    "Pass plain data, or create the object inside the function."
                )
                error.__cause__ = exc
                failures[pos] = error
        return failures


_NUMBERS = frozenset({int, float, bool, type(None), complex})
_PLAIN = _NUMBERS | {str, bytes}


def only_scalars(column: Sequence[Any]) -> bool:
    """True when a column holds only numbers or short strings: nothing worth sharing (checked at C speed)."""
    if isinstance(column, range):
        return True
    kinds = set(map(type, column))
    if kinds <= _NUMBERS:
        return True
    if not kinds <= _PLAIN:
        return False
    return max((len(v) for v in column if type(v) in (str, bytes)), default=0) < 1000


def only_plain(values: Sequence[Any]) -> bool:
    """True when ``values`` are only numbers and strings, which plain pickle writes as cloudpickle would."""
    return set(map(type, values)) <= _PLAIN


def _picklable(value: object) -> bool:
    try:
        cloudpickle.dumps(value, protocol=5)
        return True
    except Exception:
        return False
