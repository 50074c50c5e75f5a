"""EMULATION: moto's SQS queue, made to bear a thousand waiting long polls.

moto finds a queue's visible messages by asking each message for the time twice (``visible`` and
``delayed`` each compute ``utcnow()`` as a datetime, some microseconds), and every waiting long poll
does so once a second and on every send; every message received or sent also counts the queue's
messages (its attributes) that way. With W workers waiting on a queue holding W messages in flight
that is W² clock reads a second: at a thousand workers, more than the machine has. Here a message
reads the clock as ``time.time()`` (the same instant moto computes, without datetimes), a scan reads
it once, and a waiting poll sleeps until a send without scanning first (its caller scans as it wakes).
moto also wakes every waiting poll once a second, to see messages whose lease ran out: with many
waiting on one queue, they wake less often, so that the queue's wake-ups stay near
``WAKES_PER_SECOND`` (a message whose lease ran out is seen up to ``waiters / WAKES_PER_SECOND``
seconds late, as SQS itself may take). And moto wakes every waiting poll of a queue for each message
sent: a thousand threads scanning the queue for one message that one of them gets, a convoy on the
GIL that starves everything else in the process (the client's requests among them). Here a message
sent wakes ``WAKES_PER_MESSAGE`` waiting polls. What a receive returns is unchanged.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["install"]

_installed = False
WAKES_PER_SECOND = 200  # per queue, from the once-a-second wake-ups of its waiting polls
#: waiting polls a message sent wakes: one takes it; a second in case the first was giving up just then
WAKES_PER_MESSAGE = 2


class FewWakes(threading.Condition):
    """A queue's lock whose ``notify_all`` (moto's, for each message added) wakes a few waiters, not all."""

    def notify_all(self) -> None:
        self.notify(WAKES_PER_MESSAGE)


def _visible(self: Any) -> bool:
    return time.time() * 1000.0 > float(self.visible_at)


def _delayed(self: Any) -> bool:
    return time.time() * 1000.0 < float(self.delayed_until)


def _messages(self: Any) -> list[Any]:
    """The queue's visible, undelayed messages (moto's ``Queue.messages``, one clock read per scan)."""
    now = time.time() * 1000.0
    return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]


def _wait_for_messages(self: Any, timeout: int) -> None:
    """Sleep until a message is added or ``timeout`` passes (longer with many waiting: see the module notes);
    the receive loop that called this scans next."""
    with self._messages_lock:
        waiting = getattr(self, "_cloudburst_waiting", 0) + 1
        self._cloudburst_waiting = waiting
        try:
            self._messages_lock.wait(timeout=timeout * max(1.0, waiting / WAKES_PER_SECOND))
        finally:
            self._cloudburst_waiting -= 1


def install() -> None:
    """Replace those (idempotent; the process's moto, as the emulator's server is in this process)."""
    global _installed
    if _installed:
        return
    from moto.sqs.models import Message, Queue

    Message.visible = property(_visible)  # type: ignore[method-assign,assignment]
    Message.delayed = property(_delayed)  # type: ignore[method-assign,assignment]
    Queue.messages = property(_messages)  # type: ignore[method-assign,assignment]
    Queue.wait_for_messages = _wait_for_messages  # type: ignore[method-assign]
    made = Queue.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self._messages_lock = FewWakes()

    Queue.__init__ = __init__  # type: ignore[method-assign]
    _installed = True
