"""EMULATION: moto's SQS queue, made to bear a thousand waiting long polls.

moto finds a queue's visible messages by asking each message for the time twice (``visible`` and
``delayed`` each compute ``utcnow()`` as a datetime), and every waiting long poll does so once a
second and on every send. With W workers waiting on a queue holding W messages in flight that is
W² clock reads a second: at a thousand workers, more than the machine has. Here the time is read once
per scan, and a waiting poll sleeps until a send (or a second) without scanning first; its caller
scans as it wakes. What a receive returns is unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install"]

_installed = False


def _messages(self: Any) -> list[Any]:
    """The queue's visible, undelayed messages (moto's ``Queue.messages``, one clock read per scan)."""
    from moto.core.utils import unix_time_millis

    now = unix_time_millis()
    return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]


def _wait_for_messages(self: Any, timeout: int) -> None:
    """Sleep until a message is added or ``timeout`` passes; the receive loop that called this scans next."""
    with self._messages_lock:
        self._messages_lock.wait(timeout=timeout)


def install() -> None:
    """Replace the two (idempotent; the process's moto, as the emulator's server is in this process)."""
    global _installed
    if _installed:
        return
    from moto.sqs.models import Queue

    Queue.messages = property(_messages)  # type: ignore[method-assign,assignment]
    Queue.wait_for_messages = _wait_for_messages  # type: ignore[method-assign]
    _installed = True
