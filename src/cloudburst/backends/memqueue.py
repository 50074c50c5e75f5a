"""The in-process queue behind the local and inline backends: leases, hand-over to waiting receivers.

A message sent while a receiver waits is leased to it by the sender: a blocking ``receive`` is woken to take
it; a ``request`` (a receive that waits in no thread: the queue server's) is passed the messages by the
sender itself, which writes them to the worker's socket.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .base import Message

__all__ = ["MemoryQueue", "Receiver"]

_LeaseCallback = Callable[[str, Sequence[Message]], None]


@dataclass(slots=True)
class _Lease:
    message_id: int
    body: bytes
    count: int
    expires: float
    holder: str | None


@dataclass(eq=False, slots=True)
class Receiver:
    """A receive waiting for messages: a blocking one waits on ``wake``; one that takes deliveries (a
    ``request``) waits in no thread, and the sender that leases it messages passes them to ``deliver``."""

    holder: str | None
    max_messages: int
    wake: threading.Condition | None
    deliver: Callable[[list[Message]], None] | None
    deadline: float = 0.0
    parked: bool = False  # in the queue's list of waiting receivers
    served: bool = False  # answered: a sender leased it messages, or its owner ended it


class MemoryQueue:
    """At-least-once queue with leases, thread-safe. Implements the Queue contract."""

    def __init__(self, lease_seconds: float) -> None:
        self._lease_seconds = lease_seconds
        self._ready: collections.deque[tuple[int, bytes, int]] = collections.deque()
        self._leased: dict[str, _Lease] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._receivers: collections.deque[Receiver] = collections.deque()
        self._closed = False
        self._consumer: Callable[[bytes], None] | None = None
        self._on_lease: _LeaseCallback | None = None

    # -- contract
    def send_batch(self, bodies: Sequence[bytes]) -> None:
        consumer = self._consumer
        if consumer is not None:
            for body in bodies:
                consumer(body)
            return
        with self._lock:
            for body in bodies:
                self._ready.append((next(self._ids), body, 0))
            handed = self._hand_over()
        self._deliver(handed)

    def receive(self, max_messages: int, wait: float, holder: str | None = None) -> list[Message]:
        me = Receiver(holder, max_messages, threading.Condition(self._lock), None)
        deadline = time.monotonic() + wait
        with self._lock:
            try:
                while True:
                    now = time.monotonic()
                    self._expire(now)
                    if self._ready:
                        messages = self._lease(max_messages, now, holder)
                        break
                    if self._closed or now >= deadline:
                        return []
                    if not me.parked:
                        me.parked = True
                        self._receivers.append(me)
                    assert me.wake is not None
                    me.wake.wait(self._next_look(now, deadline) + 0.001)
            finally:
                self._unpark(me)
        self._report(holder, messages)
        return messages

    # -- receives that wait in no thread (the server's)
    def request(
        self, max_messages: int, wait: float, holder: str | None, deliver: Callable[[list[Message]], None]
    ) -> tuple[Receiver, float | None]:
        """A receive that waits in no thread: what is ready now is leased and passed to ``deliver`` at once;
        otherwise the request waits in the queue, and the sender that leases it messages calls ``deliver``
        itself. Returns the request and what ``recheck`` returns: its owner calls ``recheck`` again when those
        seconds have passed."""
        me = Receiver(holder, max_messages, None, deliver, time.monotonic() + wait)
        return me, self.recheck(me)

    def recheck(self, me: Receiver) -> float | None:
        """Look again for a request (its wait ended, or a lease may have run out): None once it is answered
        (by a sender; or now, with messages that are ready or with none past its deadline or once the queue
        closed), else the seconds until the next look."""
        with self._lock:
            if me.served:
                return None
            now = time.monotonic()
            self._expire(now)
            if self._ready:
                messages = self._lease(me.max_messages, now, me.holder)
            elif self._closed or now >= me.deadline:
                messages = []
            else:
                if not me.parked:
                    me.parked = True
                    self._receivers.append(me)
                return self._next_look(now, me.deadline)
            me.served = True
            self._unpark(me)
        self._report(me.holder, messages)
        assert me.deliver is not None
        me.deliver(messages)
        return None

    def end_request(self, me: Receiver) -> None:
        """Answer a request now: with the messages that are ready, else with none."""
        me.deadline = 0.0
        self.recheck(me)

    def ack(self, receipts: Sequence[str]) -> None:
        with self._lock:
            for receipt in receipts:
                self._leased.pop(receipt, None)

    def extend(self, receipts: Sequence[str], seconds: float) -> None:
        expires = time.monotonic() + seconds
        with self._lock:
            for receipt in receipts:
                lease = self._leased.get(receipt)
                if lease is not None:
                    lease.expires = expires

    def purge(self) -> None:
        with self._lock:
            self._ready.clear()

    # -- optional capabilities (LeaseReporting, Subscribable)
    def watch_leases(self, callback: _LeaseCallback) -> None:
        """Call ``callback(holder, messages)`` for each lease given to a holder, before it gets them."""
        self._on_lease = callback

    def subscribe(self, consumer: Callable[[bytes], None]) -> None:
        """From now on, hand every message sent to ``consumer`` instead of queueing it."""
        with self._lock:
            self._consumer = consumer
            waiting = [body for _, body, _ in self._ready]
            self._ready.clear()
        for body in waiting:
            consumer(body)

    # -- local extras
    def release_holder(self, holder: str) -> int:
        """Return every lease held by ``holder`` to the front of the queue."""
        with self._lock:
            released = [r for r, lease in self._leased.items() if lease.holder == holder]
            for receipt in released:
                lease = self._leased.pop(receipt)
                self._ready.appendleft((lease.message_id, lease.body, lease.count))
            handed = self._hand_over()
        self._deliver(handed)
        return len(released)

    def close(self) -> None:
        """Waiting receives return with no messages; later ones return at once."""
        with self._lock:
            self._closed = True
            waiting = list(self._receivers)
            for receiver in waiting:
                if receiver.wake is not None:
                    receiver.wake.notify()
        for receiver in waiting:
            if receiver.deliver is not None:
                self.recheck(receiver)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ready) + len(self._leased)

    def pending(self) -> list[bytes]:
        """Bodies waiting for delivery (for inspection in tests and tools)."""
        with self._lock:
            return [body for _, body, _ in self._ready]

    def replace_pending(self, index: int, body: bytes) -> None:
        """Swap the body of a waiting message (fault injection in the failure tests)."""
        with self._lock:
            message_id, _, count = self._ready[index]
            self._ready[index] = (message_id, body, count)

    # -- internals
    def _expire(self, now: float) -> None:
        expired = [r for r, lease in self._leased.items() if lease.expires <= now]
        for receipt in expired:
            lease = self._leased.pop(receipt)
            self._ready.appendleft((lease.message_id, lease.body, lease.count))

    def _next_look(self, now: float, deadline: float) -> float:
        """Seconds a receiver waits before it looks again: its deadline, or the first lease to run out."""
        timeout = deadline - now
        if self._leased:
            timeout = min(timeout, max(0.0, min(lease.expires for lease in self._leased.values()) - now))
        return timeout

    def _unpark(self, me: Receiver) -> None:
        if me.parked:
            me.parked = False
            self._receivers.remove(me)

    def _hand_over(self) -> list[tuple[Receiver, list[Message]]]:
        """Lease ready messages to waiting requests, to deliver outside the lock; wake blocked receives (they
        take messages themselves). Lock held."""
        handed = []
        now = time.monotonic()
        while self._ready and self._receivers:
            # The one that waits since last: its worker has just finished a task, and is warm (on a CPU, its
            # memory in cache); idle ones stay idle, as in a pool whose workers take turns at a lock.
            receiver = self._receivers.pop()
            receiver.parked = False
            if receiver.wake is not None:
                receiver.wake.notify()
            else:
                receiver.served = True
                handed.append((receiver, self._lease(receiver.max_messages, now, receiver.holder)))
        return handed

    def _deliver(self, handed: list[tuple[Receiver, list[Message]]]) -> None:
        for receiver, messages in handed:
            self._report(receiver.holder, messages)
            assert receiver.deliver is not None
            receiver.deliver(messages)

    def _report(self, holder: str | None, messages: list[Message]) -> None:
        if messages and holder is not None and self._on_lease is not None:
            self._on_lease(holder, messages)

    def _lease(self, max_messages: int, now: float, holder: str | None) -> list[Message]:
        out = []
        for _ in range(min(max_messages, len(self._ready))):
            message_id, body, count = self._ready.popleft()
            count += 1
            receipt = f"{message_id}.{count}"
            self._leased[receipt] = _Lease(message_id, body, count, now + self._lease_seconds, holder)
            out.append(Message(receipt, body, count))
        return out
