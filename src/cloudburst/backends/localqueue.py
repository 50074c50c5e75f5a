"""A leased message queue in the client process (``memqueue.MemoryQueue``), served to local workers over a
Unix socket.

::

    client process                                    worker process
    MemoryQueue (tasks, results) ◄─ QueueServer ◄──── RemoteQueue (same Queue contract)
         ▲ leases by holder        one thread per       socket authenticated with the
         │                         connection           job key (multiprocessing.connection)
    a dropped connection releases its holder's leases at once: a crashed worker's
    task is delivered again without waiting for the lease to run out.
    A worker's receive waits in no thread: its connection thread goes back to
    reading the socket, and a message sent meanwhile is leased and written to
    that worker's socket by the sender itself. The tasks queue tells the client
    which worker leased which task; the results queue hands each message to the
    client's consumer in the connection thread that received it. A worker sends
    a task's result, its acknowledgement and its next receive in one frame (F).

Frames are raw bytes (``Frames``, in ``multiprocessing.connection``'s format, after its handshake); nothing
on this socket is ever unpickled.
"""

from __future__ import annotations

import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge

from .base import Message, Queue
from .memqueue import MemoryQueue, Receiver

__all__ = ["MemoryQueue", "QueueServer", "RemoteQueue", "connect"]

_REQ = struct.Struct("<cB")  # op, queue index
_RECV = struct.Struct("<Id")  # max messages, wait seconds
_FIN = struct.Struct("<BIdI")  # results queue index, max messages, wait seconds, length of the receipts
_ITEM = struct.Struct("<HIQ")  # receipt length, receive count, body length
_LEN = struct.Struct("<Q")
_FRAME = struct.Struct("!i")  # a frame's length, as multiprocessing.connection writes it
_FLOAT = struct.Struct("<d")


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
        peer = _Peer(conn, self._queues)
        try:
            peer.serve()
        except (EOFError, OSError):
            pass
        finally:
            peer.hang_up()

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


class _Peer:
    """One worker's connection, served by one thread. A receive waits in no thread (``MemoryQueue.request``):
    this thread goes back to reading the socket, and the sender that leases the worker a task writes it to the
    socket itself, so a task handed over wakes no thread of the client's."""

    def __init__(self, conn: Connection, queues: Sequence[MemoryQueue]) -> None:
        self.conn = conn
        self.frames = Frames(conn.fileno())
        self.queues = queues
        self.holder: str | None = None
        self.waiting: tuple[MemoryQueue, Receiver] | None = None  # this worker's unanswered receive
        self.next_look: float | None = None  # seconds until the waiting receive is looked at again; None: now
        self._send_lock = threading.Lock()  # answers come from this thread and from senders'
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLIN)

    def deliver(self, messages: list[Message]) -> None:
        """Answer the worker's receive (from this thread or a sender's)."""
        data = _pack_messages(messages)
        try:
            with self._send_lock:
                self.frames.send(data)
        except OSError:
            pass  # gone: this thread reads the end of the connection and releases the leases

    def serve(self) -> None:
        while True:
            if self.waiting is not None and not self._frame_within(self.waiting):
                continue
            self.next_look = None
            self.handle(self.frames.recv())

    def _frame_within(self, waiting: tuple[MemoryQueue, Receiver]) -> bool:
        """Wait for a frame while a receive waits: False when the receive's time to look again came first."""
        if self.next_look is None:
            self.next_look = waiting[0].recheck(waiting[1])
            if self.next_look is None:
                self.waiting = None
                return True
        if self.frames.buffered() or self._poller.poll(math.ceil(self.next_look * 1000)):
            return True
        self.next_look = None
        return False

    def handle(self, frame: bytes) -> None:
        op, index = _REQ.unpack_from(frame)
        payload = memoryview(frame)[_REQ.size :]
        queue = self.queues[index]
        if op == b"R":
            max_messages, wait = _RECV.unpack_from(payload)
            self.receive(queue, max_messages, wait)
        elif op == b"F":
            self.finish(queue, payload)
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
            self.holder = bytes(payload).decode()

    def receive(self, queue: MemoryQueue, max_messages: int, wait: float) -> None:
        if self.waiting is not None and not self.waiting[1].served:  # one answer at a time: this ends the first
            self.waiting[0].end_request(self.waiting[1])
        request, self.next_look = queue.request(max_messages, wait, self.holder, self.deliver)
        self.waiting = None if self.next_look is None else (queue, request)

    def finish(self, tasks: MemoryQueue, payload: memoryview) -> None:
        """A task's result, its acknowledgement and the next receive, in one frame (``RemoteQueue.finish_and_
        receive``), done in that order. The result goes first, so the client's waiting thread wakes while this
        one still parks the receive (that thread runs only once this one waits for the socket, and a task it
        sent sooner is taken by the receive at once)."""
        results_index, max_messages, wait, receipts_len = _FIN.unpack_from(payload)
        receipts = bytes(payload[_FIN.size : _FIN.size + receipts_len]).decode().split("\n")
        bodies = _unpack_bodies(payload[_FIN.size + receipts_len :])
        self.queues[results_index].send_batch(bodies)
        tasks.ack(receipts)
        self.receive(tasks, max_messages, wait)

    def hang_up(self) -> None:
        """End the waiting receive, give back this worker's leases (its tasks are delivered again at once)."""
        if self.waiting is not None:
            self.waiting[0].end_request(self.waiting[1])
        if self.holder is not None:
            for queue in self.queues:
                queue.release_holder(self.holder)
        self.conn.close()


class Frames:
    """Frames in ``multiprocessing.connection``'s format (a 4-byte big-endian length, then the bytes) on a
    socket's descriptor, written with one system call and read with as few as the frame allows: the
    queue's frames are small, and this is on every task's way. Sending and receiving may run in two threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()  # read past the last frame returned

    def send(self, data: bytes) -> None:
        out = memoryview(_FRAME.pack(len(data)) + data)
        while out:
            out = out[os.write(self._fd, out) :]

    def buffered(self) -> bool:
        """A whole frame is read already (the socket need not be readable for ``recv`` to return)."""
        buffer = self._buffer
        return len(buffer) >= _FRAME.size and len(buffer) >= _FRAME.size + _FRAME.unpack_from(buffer)[0]

    def recv(self) -> bytes:
        buffer = self._buffer
        while len(buffer) < _FRAME.size:
            self._read(buffer)
        end = _FRAME.size + _FRAME.unpack_from(buffer)[0]
        while len(buffer) < end:
            self._read(buffer)
        frame = bytes(buffer[_FRAME.size : end])
        del buffer[:end]
        return frame

    def _read(self, buffer: bytearray) -> None:
        chunk = os.read(self._fd, 1 << 16)
        if not chunk:
            raise EOFError("the other end hung up")
        buffer += chunk


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
    """The Queue contract, spoken to a QueueServer. Sends are pipelined; only receive waits, one at a time
    per connection. Also ``Finishing``: a task's result, its acknowledgement and the next receive go in one
    frame."""

    def __init__(
        self, conn: Connection, frames: Frames, index: int, lock: threading.Lock, receiving: threading.Lock
    ) -> None:
        self._conn = conn  # holds the descriptor open
        self._frames = frames
        self._index = index
        self._lock = lock
        self._receiving = receiving

    def _send(self, op: bytes, payload: bytes) -> None:
        with self._lock:
            self._frames.send(_REQ.pack(op, self._index) + payload)

    def send_batch(self, bodies: Sequence[bytes]) -> None:
        self._send(b"S", _pack_bodies(bodies))

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        with self._receiving:
            self._send(b"R", _RECV.pack(max_messages, wait))
            return _unpack_messages(self._frames.recv())

    def finish_and_receive(
        self, results: Queue, bodies: Sequence[bytes], receipts: Sequence[str], max_messages: int, wait: float
    ) -> list[Message]:
        """``results.send_batch(bodies)``, ``ack(receipts)``, then ``receive``: one frame when ``results`` is
        served on the same connection."""
        if not (isinstance(results, RemoteQueue) and results._frames is self._frames):
            results.send_batch(bodies)
            self.ack(receipts)
            return self.receive(max_messages, wait)
        joined = "\n".join(receipts).encode()
        head = _FIN.pack(results._index, max_messages, wait, len(joined))
        with self._receiving:
            self._send(b"F", head + joined + _pack_bodies(bodies))
            return _unpack_messages(self._frames.recv())

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
    lock, receiving = threading.Lock(), threading.Lock()
    frames = Frames(conn.fileno())
    with lock:
        frames.send(_REQ.pack(b"H", 0) + holder.encode())
    return [RemoteQueue(conn, frames, index, lock, receiving) for index in range(count)]
