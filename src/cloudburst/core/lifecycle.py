"""A session's lifecycle: one state, changed under the session's lock.

::

    RUNNING ──shutdown──► SHUTTING_DOWN ──close──► CLOSED
       │                        │                    ▲
       └──────break────► BROKEN ┴────────close───────┘

As in CPython's ``concurrent.futures.process`` and loky: while RUNNING new work is taken;
SHUTTING_DOWN finishes what it has; BROKEN (the cause kept) fails what waits and refuses new
work with :class:`BrokenExecutorError`; CLOSED means the session's threads have been told to
stop. Pure: the caller holds the lock.
"""

from __future__ import annotations

import enum

from ..errors import BrokenExecutorError, ExecutorShutdownError

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """Where a session is in its life."""

    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"
    BROKEN = "broken"
    CLOSED = "closed"


class Lifecycle:
    """The state, and why the session broke (kept once closed, so later calls still say why)."""

    def __init__(self) -> None:
        self.state = State.RUNNING
        self.cause: BaseException | None = None

    @property
    def closed(self) -> bool:
        """The session's threads have been told to stop."""
        return self.state is State.CLOSED

    @property
    def working(self) -> bool:
        """Workers are still wanted: running or finishing what was accepted, not broken or closed."""
        return self.state in (State.RUNNING, State.SHUTTING_DOWN)

    def check_accepting(self) -> None:
        """Raise unless new work may be taken: BrokenExecutorError naming the cause, or ExecutorShutdownError."""
        cause = self.cause
        if cause is not None:
            first_line = (str(cause).splitlines() or [type(cause).__name__])[0].rstrip(".")
            raise BrokenExecutorError(
                f"this executor can no longer run work ({type(cause).__name__}: {first_line}); "
                "create a new Executor once the cause is fixed",
                cause,
            )
        if self.state is not State.RUNNING:
            raise ExecutorShutdownError("cannot schedule new work after shutdown; create a new Executor")

    def shut_down(self) -> None:
        """Take no new work; what was accepted goes on."""
        if self.state is State.RUNNING:
            self.state = State.SHUTTING_DOWN

    def break_(self, cause: BaseException) -> bool:
        """The session can no longer run work; True if this is the first cause (later ones are not kept)."""
        if self.cause is not None:
            return False
        self.cause = cause
        if self.state is not State.CLOSED:
            self.state = State.BROKEN
        return True

    def close(self) -> bool:
        """Tell the threads to stop; False if the session was closed already."""
        if self.state is State.CLOSED:
            return False
        self.state = State.CLOSED
        return True
