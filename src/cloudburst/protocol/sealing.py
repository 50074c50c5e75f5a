"""Sealing: every message between the client and its workers is authenticated before anything in it is
unpickled.

Wire format 2 (MAGIC ``CB\x02``)::

    MAGIC (3) | kind (1) | HMAC-SHA256 (32) | job tag (16) | message id (16) | body
                 └─────── the MAC covers the kind and everything after the MAC ───────┘

A message is sealed with HMAC-SHA256 under the job's key. The job tag binds a message to its job, so a
message copied from another job is refused even under the same key; the message id (16 bytes unique per
message, see ``task._MessageIds``) lets a reader drop a replayed or duplicated copy of a message it has
handled. Format 1 had neither and is refused, unread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from ..errors import PayloadAuthenticationError

__all__ = ["MAGIC", "SEALED_HEAD", "Unsealed", "job_tag", "seal", "unseal"]

MAGIC = b"CB\x02"  # the wire format's version is its last byte
_MAC_SIZE = 32
JOB_TAG_SIZE = 16
MESSAGE_ID_SIZE = 16
_HEAD = len(MAGIC) + 1 + _MAC_SIZE
SEALED_HEAD = _HEAD + JOB_TAG_SIZE + MESSAGE_ID_SIZE  # where the body starts


def job_tag(job_id: str) -> bytes:
    """The 16 bytes that bind a sealed message to job ``job_id``."""
    return hashlib.sha256(job_id.encode()).digest()[:JOB_TAG_SIZE]


@dataclass(frozen=True, slots=True)
class Unsealed:
    """An authenticated message: its kind, its unique id, and a view of its body (nothing unpickled)."""

    kind: bytes
    message_id: bytes
    body: memoryview


_KEYED: dict[bytes, tuple[Any, Any]] = {}  # key -> its HMAC's inner and outer SHA-256 states (a few keys)
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_sha256(key: bytes, parts: tuple[bytes | memoryview, ...]) -> bytes:
    """HMAC-SHA256 of the parts joined (RFC 2104, as ``hmac.new`` computes it) from the key's inner and outer
    hash states, kept per key: every message is sealed or checked, and setting a key up costs more than hashing
    a small message. The construction is the one ``hmac`` itself falls back to."""
    states = _KEYED.get(key)
    if states is None:
        padded = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        states = (hashlib.sha256(padded.translate(_IPAD)), hashlib.sha256(padded.translate(_OPAD)))
        if len(_KEYED) >= 8:  # a process seals for a job or two at a time
            _KEYED.clear()
        _KEYED[key] = states
    inner = states[0].copy()
    for part in parts:
        inner.update(part)
    outer = states[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def seal(key: bytes, kind: bytes, body: bytes, *, job: bytes, message_id: bytes | None = None) -> bytes:
    """Seal ``body`` for job tag ``job`` (see :func:`job_tag`) under a fresh message id (or ``message_id``)."""
    if len(job) != JOB_TAG_SIZE:
        raise ValueError(f"a job tag is {JOB_TAG_SIZE} bytes, not {len(job)}")
    ident = os.urandom(MESSAGE_ID_SIZE) if message_id is None else message_id
    return b"".join((MAGIC, kind, _hmac_sha256(key, (kind, job, ident, body)), job, ident, body))


def unseal(key: bytes, data: bytes, *, job: bytes | None) -> Unsealed:
    """Authenticate a sealed message, or raise PayloadAuthenticationError without unpickling anything.

    ``job`` is the reader's job tag: a message sealed for another job is refused. Only a reader that found
    the key by the job's own name (a control record read by a tool) passes None.
    """
    if len(data) < SEALED_HEAD or data[: len(MAGIC)] != MAGIC:
        if len(data) >= len(MAGIC) and data[:2] == MAGIC[:2]:
            raise PayloadAuthenticationError(
                f"message is in cloudburst wire format {data[2]}, and this cloudburst reads format {MAGIC[2]}: "
                "the client and its workers run different cloudburst versions; it was discarded unread"
            )
        raise PayloadAuthenticationError("message is not a cloudburst payload (bad header); it was discarded unread")
    view = memoryview(data)
    kind = bytes(view[len(MAGIC) : len(MAGIC) + 1])
    if not hmac.compare_digest(view[len(MAGIC) + 1 : _HEAD], _hmac_sha256(key, (kind, view[_HEAD:]))):
        raise PayloadAuthenticationError(
            "message failed its HMAC check (tampered with, or sealed under another job's key); it was discarded unread"
        )
    if job is not None and view[_HEAD : _HEAD + JOB_TAG_SIZE] != job:
        raise PayloadAuthenticationError("message was sealed for another job (copied from it); it was discarded unread")
    return Unsealed(kind, bytes(view[_HEAD + JOB_TAG_SIZE : SEALED_HEAD]), view[SEALED_HEAD:])


# ---------------------------------------------------------------------------- blobs
