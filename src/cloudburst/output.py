"""What a task prints, logs and warns, captured in the worker and replayed in the client.

Capture is set up once per task (a chunk of items), not per item, so it costs
nothing measurable on tiny items; each event is tagged with the index of the
item that was running. In the client, events are re-emitted through the
client's own ``sys.stdout``/``sys.stderr``, ``logging`` and ``warnings``
machinery, so the user's filters and handlers apply, and every line says which
item it came from: ``[item 17] ...``.
"""

from __future__ import annotations

import builtins
import io
import logging
import pickle
import sys
import warnings
from types import TracebackType
from typing import Any, TextIO

import cloudpickle

__all__ = ["Capture", "replay"]

MAX_EVENT_BYTES = 1 << 20  # per task; the rest is dropped with a note


class _Stream(io.TextIOBase):
    def __init__(self, capture: Capture, kind: str, original: TextIO) -> None:
        self._capture = capture
        self._kind = kind
        self._original = original

    def write(self, text: str) -> int:
        self._capture.add(self._kind, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

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
    """Captures one task's output. Set ``item`` before each call."""

    def __init__(self, log_level: int) -> None:
        self.item = -1
        self.events: list[list[Any]] = []
        self._size = 0
        self._dropped = False
        self._log_level = log_level
        self._saved: tuple[Any, ...] = ()
        self._warnings: warnings.catch_warnings[list[warnings.WarningMessage]] | None = None
        self._caught: list[warnings.WarningMessage] = []
        self._warning_mark = 0

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

    def warned(self) -> bool:
        """Whether warnings arrived since the last collect_warnings."""
        return self._warning_mark < len(self._caught)

    def collect_warnings(self) -> None:
        """Tag warnings raised since the last call with the current item."""
        while self._warning_mark < len(self._caught):
            w = self._caught[self._warning_mark]
            self._warning_mark += 1
            category = w.category
            try:
                pickled = (
                    None if getattr(builtins, category.__name__, None) is category else cloudpickle.dumps(category)
                )
            except Exception:
                pickled = None
            self.add("warning", (category.__name__, str(w.message), w.filename, w.lineno, pickled))

    def __enter__(self) -> Capture:
        root = logging.getLogger()
        handler = _Handler(self)
        self._saved = (sys.stdout, sys.stderr, handler, root.level)
        sys.stdout = _Stream(self, "stdout", sys.stdout)
        sys.stderr = _Stream(self, "stderr", sys.stderr)
        root.addHandler(handler)
        root.setLevel(self._log_level)
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("default")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.collect_warnings()
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
        stdout, stderr, handler, level = self._saved
        sys.stdout, sys.stderr = stdout, stderr
        root = logging.getLogger()
        root.removeHandler(handler)
        root.setLevel(level)


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
    """Re-emit a task's captured events in the client."""
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
