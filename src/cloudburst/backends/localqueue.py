"""A leased message queue in the client process, served to local workers over a Unix socket.

::

    client process                                    worker process
    MemoryQueue (tasks, results) ◄─ QueueServer ◄──── RemoteQueue (same Queue contract)
         ▲ leases by holder        one thread per       socket authenticated with the
         │                         connection           job key (multiprocessing.connection)
    a dropped connection releases its holder's leases at once: a crashed worker's
    task is delivered again without waiting for the lease to run out.
    A message sent while a worker waits is leased and written to that worker's
    socket by the sender itself. The tasks queue tells the client which worker
    leased which task; the results queue hands each message to the client's
    consumer in the connection thread that received it.

Frames are raw bytes (``send_bytes``); nothing on this socket is ever unpickled.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge

from .base import Message

__all__ = ["MemoryQueue", "QueueServer", "RemoteQueue", "connect"]

_REQ = struct.Struct("<cB")  # op, queue index
_RECV = struct.Struct("<Id")  # max messages, wait seconds
_ITEM = struct.Struct("<HIQ")  # receipt length, receive count, body length
_LEN = struct.Struct("<Q")
_FLOAT = struct.Struct("<d")
_LeaseCallback = Callable[[str, Sequence[Message]], None]


@dataclass(slots=True)
class _Lease:
    message_id: int
    body: bytes
    count: int
    expires: float
    holder: str | None


@dataclass(eq=False, slots=True)
class _Receiver:
    """A receive waiting for messages. One that can take deliveries is handed them by the sender."""

    holder: str | None
    max_messages: int
    wake: threading.Condition
    deliver: Callable[[list[Message]], None] | None
    parked: bool = False  # in the queue's list of waiting receivers
    served: bool = False  # a sender leased messages to it and delivers them


class MemoryQueue:
    """At-least-once queue with leases, thread-safe. Implements the Queue contract."""

    def __init__(self, lease_seconds: float) -> None:
        self._lease_seconds = lease_seconds
        self._ready: collections.deque[tuple[int, bytes, int]] = collections.deque()
        self._leased: dict[str, _Lease] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._receivers: collections.deque[_Receiver] = collections.deque()
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
        return self.receive_or_hand_over(max_messages, wait, holder, None) or []

    def receive_or_hand_over(
        self,
        max_messages: int,
        wait: float,
        holder: str | None,
        deliver: Callable[[list[Message]], None] | None,
    ) -> list[Message] | None:
        """Receive; while it waits, a sender may lease messages to it and pass them to ``deliver``
        itself (sparing this thread's wake-up on the way): then this returns None."""
        me = _Receiver(holder, max_messages, threading.Condition(self._lock), deliver)
        deadline = time.monotonic() + wait
        with self._lock:
            try:
                while not me.served:
                    now = time.monotonic()
                    self._expire(now)
                    if self._ready:
                        messages = self._lease(max_messages, now, holder)
                        break
                    if self._closed or now >= deadline:
                        return []
                    timeout = deadline - now
                    if self._leased:
                        timeout = min(timeout, max(0.0, min(lease.expires for lease in self._leased.values()) - now))
                    if not me.parked:
                        me.parked = True
                        self._receivers.append(me)
                    me.wake.wait(timeout + 0.001)
                else:
                    return None
            finally:
                if me.parked:
                    me.parked = False
                    self._receivers.remove(me)
        self._report(holder, messages)
        return messages

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
        with self._lock:
            self._closed = True
            for receiver in self._receivers:
                receiver.wake.notify()

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

    def _hand_over(self) -> list[tuple[_Receiver, list[Message]]]:
        """Lease ready messages to waiting receivers that take deliveries; wake the others. Lock held."""
        handed = []
        now = time.monotonic()
        while self._ready and self._receivers:
            receiver = self._receivers.popleft()
            receiver.parked = False
            if receiver.deliver is not None:
                receiver.served = True
                handed.append((receiver, self._lease(receiver.max_messages, now, receiver.holder)))
            receiver.wake.notify()  # a served one returns at once; the others take messages themselves
        return handed

    def _deliver(self, handed: list[tuple[_Receiver, list[Message]]]) -> None:
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


class QueueServer:
    """Serves MemoryQueues to worker processes over an authenticated Unix socket.

    The accept thread only accepts: each connection's handshake runs on that connection's own
    thread, under a deadline, so a peer that stalls, hangs up or fails the handshake cannot stop
    others from connecting. ``close`` ends every thread the server started.
    """

    def __init__(self, address: str, authkey: bytes, queues: Sequence[MemoryQueue]) -> None:
        self._queues = list(queues)
        self._authkey = authkey
        self.address = address
        self._closed = False
        self._sockets: dict[int, socket.socket] = {}  # per connection thread: its socket, shut down by close()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(address)
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept_loop, name="cloudburst-queue-server", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)  # out of file descriptors, say: try again, without spinning
                continue
            if self._closed:
                sock.close()
                return
            thread = threading.Thread(target=self._serve, args=(sock,), name="cloudburst-queue-conn", daemon=True)
            with self._lock:
                self._sockets[id(thread)] = sock
                self._threads.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        me = threading.current_thread()
        try:
            conn = self._handshake(sock)
            if conn is not None:
                self._serve_authenticated(conn)
        finally:
            with self._lock:
                self._sockets.pop(id(me), None)
                self._threads.discard(me)
            sock.close()

    def _handshake(self, sock: socket.socket) -> Connection | None:
        """Authenticate the peer (both ways, as ``multiprocessing.connection`` does); None if it fails."""
        _set_receive_timeout(sock, HANDSHAKE_SECONDS)
        conn = Connection(os.dup(sock.fileno()))
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
        except (AuthenticationError, EOFError, OSError, ValueError):
            conn.close()  # a wrong key, a hang-up, a stall past the deadline, garbage: drop this peer only
            return None
        _set_receive_timeout(sock, 0)
        return conn

    def _serve_authenticated(self, conn: Connection) -> None:
        holder: str | None = None

        def deliver(messages: list[Message]) -> None:
            """Answer this connection's waiting receive (from a sender's thread)."""
            try:
                conn.send_bytes(_pack_messages(messages))
            except OSError:
                pass  # gone: this thread reads the end of the connection and releases the leases

        try:
            while True:
                frame = conn.recv_bytes()
                op, index = _REQ.unpack_from(frame)
                payload = memoryview(frame)[_REQ.size :]
                queue = self._queues[index]
                if op == b"R":
                    max_messages, wait = _RECV.unpack_from(payload)
                    messages = queue.receive_or_hand_over(max_messages, wait, holder, deliver)
                    if messages is not None:
                        conn.send_bytes(_pack_messages(messages))
                elif op == b"S":
                    queue.send_batch(_unpack_bodies(payload))
                elif op == b"A":
                    queue.ack(bytes(payload).decode().split("\n"))
                elif op == b"E":
                    (seconds,) = _FLOAT.unpack_from(payload)
                    queue.extend(bytes(payload[_FLOAT.size :]).decode().split("\n"), seconds)
                elif op == b"P":
                    queue.purge()
                elif op == b"H":
                    holder = bytes(payload).decode()
        except (EOFError, OSError):
            pass
        finally:
            if holder is not None:
                for queue in self._queues:
                    queue.release_holder(holder)
            conn.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, hang up on every peer, and wait for the server's threads to end."""
        self._closed = True
        try:
            # Wakes the accept thread on every platform (closing a socket does not wake a blocked accept).
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
                wake.settimeout(1.0)
                wake.connect(self.address)
        except OSError:
            pass
        self._thread.join(timeout)
        self._listener.close()
        try:
            os.unlink(self.address)
        except OSError:
            pass
        with self._lock:
            sockets = list(self._sockets.values())
            threads = list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            except OSError:
                pass  # already closed
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


HANDSHAKE_SECONDS = 20.0  # a worker answers in milliseconds; this only bounds a silent peer's thread


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO: reads of this socket's descriptor fail after ``seconds`` (0: never), blocking mode kept."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _pack_messages(messages: Sequence[Message]) -> bytes:
    parts = [_LEN.pack(len(messages))]
    for message in messages:
        receipt = message.receipt.encode()
        parts.append(_ITEM.pack(len(receipt), message.receive_count, len(message.body)))
        parts.append(receipt)
        parts.append(message.body)
    return b"".join(parts)


def _unpack_messages(data: bytes) -> list[Message]:
    (count,) = _LEN.unpack_from(data)
    offset = _LEN.size
    out = []
    for _ in range(count):
        receipt_len, receive_count, body_len = _ITEM.unpack_from(data, offset)
        offset += _ITEM.size
        receipt = data[offset : offset + receipt_len].decode()
        offset += receipt_len
        out.append(Message(receipt, data[offset : offset + body_len], receive_count))
        offset += body_len
    return out


def _pack_bodies(bodies: Sequence[bytes]) -> bytes:
    parts: list[bytes] = []
    for body in bodies:
        parts.append(_LEN.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def _unpack_bodies(data: memoryview) -> list[bytes]:
    out = []
    offset = 0
    while offset < len(data):
        (length,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        out.append(bytes(data[offset : offset + length]))
        offset += length
    return out


class RemoteQueue:
    """The Queue contract, spoken to a QueueServer. Sends are pipelined; only receive waits."""

    def __init__(self, conn: Connection, index: int, lock: threading.Lock) -> None:
        self._conn = conn
        self._index = index
        self._lock = lock

    def _send(self, op: bytes, payload: bytes) -> None:
        with self._lock:
            self._conn.send_bytes(_REQ.pack(op, self._index) + payload)

    def send_batch(self, bodies: Sequence[bytes]) -> None:
        self._send(b"S", _pack_bodies(bodies))

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        self._send(b"R", _RECV.pack(max_messages, wait))
        return _unpack_messages(self._conn.recv_bytes())

    def ack(self, receipts: Sequence[str]) -> None:
        if receipts:
            self._send(b"A", "\n".join(receipts).encode())

    def extend(self, receipts: Sequence[str], seconds: float) -> None:
        if receipts:
            self._send(b"E", _FLOAT.pack(seconds) + "\n".join(receipts).encode())

    def purge(self) -> None:
        self._send(b"P", b"")


def connect(address: str, authkey: bytes, holder: str, count: int) -> list[RemoteQueue]:
    """Connect to a QueueServer as ``holder``; returns one proxy per served queue."""
    conn = Client(address, family="AF_UNIX", authkey=authkey)
    lock = threading.Lock()
    with lock:
        conn.send_bytes(_REQ.pack(b"H", 0) + holder.encode())
    return [RemoteQueue(conn, index, lock) for index in range(count)]
