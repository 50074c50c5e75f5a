"""What a task prints, logs and warns, captured in the worker and replayed in the client.

The worker installs its stream and warning hooks once per process; a task (a
chunk of items) only swaps in a fresh event buffer, so capture costs nothing
measurable on tiny items. Each event is tagged with the index of the item that
was running; outside a task, output goes where it went before. In the client,
events are re-emitted through the client's own ``sys.stdout``/``sys.stderr``,
``logging`` and ``warnings`` machinery, so the user's filters and handlers
apply, and every line says which item it came from: ``[item 17] ...``.
"""

from __future__ import annotations

import builtins
import io
import logging
import pickle
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

import cloudpickle

from .. import seeds
from ..core.progress import above_progress

__all__ = ["Capture", "replay"]

MAX_EVENT_BYTES = 1 << 20  # per task; the rest is dropped with a note
_OFF = logging.CRITICAL + 1  # the capture's handler between tasks: no record reaches it


class _Stream(io.TextIOBase):
    def __init__(self, capture: Capture, kind: str, original: TextIO) -> None:
        self._capture = capture
        self._kind = kind
        self._original = original

    def write(self, text: str) -> int:
        if self._capture.active:
            self._capture.add(self._kind, text)
            return len(text)
        return self._original.write(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if not self._capture.active:
            self._original.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8") or "utf-8"

    def isatty(self) -> bool:
        return False


class _Handler(logging.Handler):
    def __init__(self, capture: Capture) -> None:
        super().__init__(logging.NOTSET)
        self._capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not break the task
            message = f"{record.msg!r} (formatting failed: {exc})"
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = logging.Formatter().formatException(record.exc_info)
        self._capture.add(
            "log",
            {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": message,
                "pathname": record.pathname,
                "filename": record.filename,
                "module": record.module,
                "lineno": record.lineno,
                "funcName": record.funcName,
                "created": record.created,
                "msecs": record.msecs,
                "exc_text": exc_text,
                "stack_info": record.stack_info,
                "process": record.process,
                "processName": record.processName,
                "thread": record.thread,
                "threadName": record.threadName,
            },
        )


class Capture:
    """Captures the output of a worker's tasks. ``begin`` and ``end`` bracket each task; each piece of
    output is tagged with the item running in its thread.

    The streams, ``warnings.showwarning`` and the root logger's handler are installed on the first
    ``begin`` and stay in place: outside a task the streams pass output through, and the handler is
    off (its level above every record's, so a record with no other handler still reaches logging's
    last resort). ``begin`` puts back whatever a task removed.
    """

    def __init__(self) -> None:
        self.active = False
        self.events: list[list[Any]] = []
        self._size = 0
        self._dropped = False
        self._handler = _Handler(self)
        self._handler.level = _OFF
        self._streams: tuple[_Stream, _Stream] | None = None
        self._show_original: Callable[..., None] = warnings.showwarning
        self._level = logging.NOTSET

    @property
    def item(self) -> int:
        """The item whose call is running in this thread (-1 between calls): the worker keeps it in :mod:`seeds`."""
        index = seeds.current_item()
        return -1 if index is None else index

    def add(self, kind: str, payload: Any) -> None:
        if self._size > MAX_EVENT_BYTES:
            if not self._dropped:
                self._dropped = True
                self.events.append([self.item, "stderr", "[cloudburst: further output of this task was dropped]\n"])
            return
        self._size += len(payload) if isinstance(payload, str) else 200
        last = self.events[-1] if self.events else None
        if isinstance(payload, str) and last is not None and last[0] == self.item and last[1] == kind:
            last[2] += payload
        else:
            self.events.append([self.item, kind, payload])

    def _show_warning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not self.active:
            self._show_original(message, category, filename, lineno, file, line)
            return
        try:
            builtin = getattr(builtins, category.__name__, None) is category
            pickled = None if builtin else cloudpickle.dumps(category)
        except Exception:
            pickled = None
        self.add("warning", (category.__name__, str(message), filename, lineno, pickled))

    def begin(self, log_level: int) -> None:
        """Start capturing a task's output into a fresh buffer."""
        if self._streams is None:
            self._show_original = warnings.showwarning
            self._streams = (_Stream(self, "stdout", sys.stdout), _Stream(self, "stderr", sys.stderr))
        # A task may have replaced these: put ours back (cheap), and show each warning once per task.
        sys.stdout, sys.stderr = self._streams
        warnings.showwarning = self._show_warning
        warnings.simplefilter("default")
        root = logging.root
        if self._handler not in root.handlers:  # the first task, or one removed it
            root.addHandler(self._handler)
        self._handler.level = logging.NOTSET
        self._level = root.level
        if self._level != log_level:
            root.setLevel(log_level)
        self.events = []
        self._size = 0
        self._dropped = False
        self.active = True

    def end(self) -> list[list[Any]]:
        """Stop capturing; returns the task's events."""
        self.active = False
        self._handler.level = _OFF
        root = logging.root
        if root.level != self._level:
            root.setLevel(self._level)
        return self.events


def _category(name: str, pickled: bytes | None) -> type[Warning]:
    if pickled is not None:
        try:
            category = pickle.loads(pickled)  # inside an authenticated result message
            if isinstance(category, type) and issubclass(category, Warning):
                return category
        except Exception:
            pass
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Warning):
        return found
    return UserWarning


def replay(events: list[Any]) -> None:
    """Re-emit a task's captured events in the client, above the progress bar if one is shown."""
    with above_progress():
        _replay(events)


def _replay(events: list[Any]) -> None:
    for index, kind, payload in events:
        tag = f"[item {index}] "
        if kind in ("stdout", "stderr"):
            stream = sys.stdout if kind == "stdout" else sys.stderr
            lines = payload.splitlines(keepends=True)
            stream.write("".join(tag + line for line in lines))
            if lines and not lines[-1].endswith("\n"):
                stream.write("\n")
            stream.flush()
        elif kind == "log":
            record = logging.makeLogRecord({**payload, "msg": tag + payload["msg"], "args": None})
            record.cloudburst_item = index
            logger = logging.getLogger(payload["name"])
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        elif kind == "warning":
            name, message, filename, lineno, pickled = payload
            warnings.warn_explicit(tag + message, _category(name, pickled), filename, lineno)
