"""EMULATION: capture a task's output per thread, for many worker loops in one process (light mode).

A worker process captures what its task prints by swapping ``sys.stdout``, ``sys.stderr``,
``warnings.showwarning`` and a root logging handler for the time of the task
(:class:`cloudburst.protocol.output.Capture`). Those are process-wide: two loops on two threads
doing so would take each other's output, and wrap each other's streams. Here one set of hooks is
installed for the process; each passes what a thread writes to the capture that thread has begun,
and everything else on to where it went before.

Unlike a worker process, a light-mode task does not lower the root logger's level to the task's
``log_level`` (that is process-wide too): log records below the root's level are not captured.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from typing import Any, TextIO

from ..protocol.output import Capture

__all__ = ["ThreadCapture"]

_local = threading.local()
_lock = threading.Lock()


def _current() -> ThreadCapture | None:
    found: ThreadCapture | None = getattr(_local, "capture", None)
    return found if found is not None and found.active else None


class _Dispatch(io.TextIOBase):
    """Stands for ``sys.stdout`` or ``sys.stderr``: a capturing thread's text to its capture."""

    def __init__(self, kind: str, original: TextIO) -> None:
        self._kind = kind
        self._original = original

    def write(self, text: str) -> int:
        capture = _current()
        if capture is not None:
            capture.add(self._kind, text)
            return len(text)
        return self._original.write(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if _current() is None:
            self._original.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8") or "utf-8"

    def isatty(self) -> bool:
        return False


class _DispatchHandler(logging.Handler):
    """On the root logger: a capturing thread's records to its capture."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _current()
        if capture is not None:
            capture.take_record(record)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    capture = _current()
    if capture is not None:
        capture.take_warning(message, category, filename, lineno, file, line)
    else:
        _previous_show_warning(message, category, filename, lineno, file, line)


_previous_show_warning = warnings.showwarning
_handler = _DispatchHandler(logging.NOTSET)


def _install() -> None:
    """Put the dispatching hooks in place (again, if something replaced them since)."""
    global _previous_show_warning
    with _lock:
        if not isinstance(sys.stdout, _Dispatch):
            sys.stdout = _Dispatch("stdout", sys.stdout)
        if not isinstance(sys.stderr, _Dispatch):
            sys.stderr = _Dispatch("stderr", sys.stderr)
        if warnings.showwarning is not _show_warning:
            _previous_show_warning = warnings.showwarning
            warnings.showwarning = _show_warning
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)


class ThreadCapture(Capture):
    """A :class:`Capture` for one thread of many: ``begin`` and ``end`` touch no process-wide state
    but this thread's own."""

    def begin(self, log_level: int) -> None:
        """Start capturing this thread's output into a fresh buffer (``log_level``: see the module notes)."""
        _install()
        self.events = []
        self._size = 0
        self._dropped = False
        self.active = True
        _local.capture = self

    def end(self) -> list[list[Any]]:
        """Stop capturing; returns the task's events."""
        self.active = False
        _local.capture = None
        return self.events

    def take_record(self, record: logging.LogRecord) -> None:
        """A log record of this thread's task."""
        self._handler.emit(record)

    def take_warning(self, *args: Any) -> None:
        """A warning of this thread's task (``warnings.showwarning``'s arguments)."""
        self._show_warning(*args)
