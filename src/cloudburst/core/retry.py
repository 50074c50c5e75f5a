"""Riding out a short outage: one backoff for every loop of the client that talks to a backend.

Whether an error is worth waiting out is the backend's call (``Backend.is_transient``): a
throttled or briefly unreachable service is, a missing permission or a deleted queue is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["MAX_OUTAGE_ROUNDS", "Outage"]

T = TypeVar("T")

log = logging.getLogger("cloudburst")
#: failures in a row before an outage is given up on: about two minutes of backing off
MAX_OUTAGE_ROUNDS = 8


class Outage:
    """Counts one loop's failures in a row and backs off between them: 0.5 s, 1 s, 2 s ... at most 30 s."""

    def __init__(
        self,
        is_transient: Callable[[BaseException], bool],
        *,
        rounds: int = MAX_OUTAGE_ROUNDS,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.is_transient = is_transient
        self.rounds = rounds
        self.failures = 0
        self._sleep = sleep

    def ok(self) -> None:
        """The loop's last attempt worked: the outage, if any, is over."""
        self.failures = 0

    def wait_out(self, exc: BaseException, what: str) -> bool:
        """After a failure: back off and return True if ``exc`` is worth trying again, else False (and the
        count starts again, for a loop that goes on after giving up)."""
        self.failures += 1
        if not self.is_transient(exc) or self.failures >= self.rounds:
            self.failures = 0
            return False
        log.warning("%s failed (%s); trying again", what, exc)
        self._sleep(min(30.0, 0.5 * 2 ** (self.failures - 1)))
        return True

    def call(self, fn: Callable[[], T], what: str, *, stop: Callable[[], bool] = lambda: False) -> T | None:
        """``fn()``, tried again through a short outage; None if ``stop()`` says to give up first."""
        while not stop():
            try:
                result = fn()
            except Exception as exc:
                if not self.wait_out(exc, what):
                    raise
                continue
            self.ok()
            return result
        return None
