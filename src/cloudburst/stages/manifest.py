"""A stage cache entry's manifest: the ``ValueRef`` of a stage call's result as JSON, sealed with the cache key.

::

    {"format": 1, "key": <cache key of the call>, "stage": <stage name>, "created": <epoch seconds>,
     "ref": {"digest", "packed": {"inline": base64 | null, "blob": blob | null, "buffers": [blob...]} | null,
             "parts": [ref...] | null, "kind", "length", "nbytes"}}        blob: {"digest", "size", "zstd"}

It is sealed (``protocol.sealing``) under the namespace's cache key, bound to the namespace by its tag and
to its call by its message id (the key's first 16 bytes) and by the key inside it: a manifest edited,
forged, or copied under another call's name fails to open, and nothing in it is unpickled before that.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ..errors import PayloadAuthenticationError
from ..protocol.blobs import BlobRef, Packed
from ..protocol.sealing import job_tag, seal, unseal
from .refs import ValueRef

__all__ = ["FORMAT", "check_key", "open_manifest", "ref_from_json", "ref_to_json", "seal_manifest"]

FORMAT = 1
_KIND = b"M"
_KEY = re.compile(r"^[0-9a-f]{32,128}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def check_key(key: str) -> str:
    """A call's cache key as the cache takes it: lowercase hex (``Fingerprint.key()``); it names a file."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"{key!r} is not a stage cache key (32 to 128 lowercase hex digits)")
    return key


def _tag(namespace: str) -> bytes:
    return job_tag(f"stage-cache:{namespace}")


def _blob_to_json(blob: BlobRef) -> dict[str, Any]:
    return {"digest": blob.digest, "size": blob.size, "zstd": blob.zstd}


def _blob_from_json(data: Any) -> BlobRef:
    digest, size, zstd = data["digest"], data["size"], data["zstd"]
    if not (isinstance(digest, str) and _DIGEST.match(digest) and type(size) is int and isinstance(zstd, bool)):
        raise ValueError(f"malformed blob reference {data!r}")
    return BlobRef(digest, size, zstd)


def ref_to_json(ref: ValueRef) -> dict[str, Any]:
    """``ref`` as JSON-able data (inline bytes in base64)."""
    packed = None
    if ref.packed is not None:
        inline = ref.packed.inline
        packed = {
            "inline": None if inline is None else base64.b64encode(inline).decode(),
            "blob": None if ref.packed.blob is None else _blob_to_json(ref.packed.blob),
            "buffers": [_blob_to_json(b) for b in ref.packed.buffers],
        }
    return {
        "digest": ref.digest,
        "packed": packed,
        "parts": None if ref.parts is None else [ref_to_json(p) for p in ref.parts],
        "kind": ref.kind,
        "length": ref.length,
        "nbytes": ref.nbytes,
    }


def ref_from_json(data: Any) -> ValueRef:
    """The ``ValueRef`` that :func:`ref_to_json` wrote; ValueError (or KeyError, TypeError) when malformed."""
    packed, parts = data["packed"], data["parts"]
    if packed is not None:
        inline, blob = packed["inline"], packed["blob"]
        packed = Packed(
            None if inline is None else base64.b64decode(inline, validate=True),
            None if blob is None else _blob_from_json(blob),
            tuple(_blob_from_json(b) for b in packed["buffers"]),
        )
    ref = ValueRef(
        digest=data["digest"],
        packed=packed,
        parts=None if parts is None else tuple(ref_from_json(p) for p in parts),
        kind=data["kind"],
        length=data["length"],
        nbytes=data["nbytes"],
    )
    if not isinstance(ref.digest, str) or not isinstance(ref.kind, str) or type(ref.nbytes) is not int:
        raise ValueError("malformed value reference")
    if (ref.packed is None) == (ref.parts is None) or not (ref.length is None or type(ref.length) is int):
        raise ValueError("malformed value reference: it needs either a packed value or parts")
    return ref


def seal_manifest(cache_key: bytes, namespace: str, stage: str, key: str, ref: ValueRef, created: float) -> bytes:
    """The sealed manifest of call ``key`` of ``stage``, whose result is ``ref``."""
    body = {"format": FORMAT, "key": check_key(key), "stage": stage, "created": created, "ref": ref_to_json(ref)}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return seal(cache_key, _KIND, text, job=_tag(namespace), message_id=bytes.fromhex(key[:32]))


def open_manifest(cache_key: bytes, namespace: str, stage: str | None, key: str, data: bytes) -> ValueRef:
    """The ref a manifest names, once it proved to be the one sealed for call ``key`` of ``stage`` (None: of
    any stage, for tools that find manifests by listing the cache).

    Raises PayloadAuthenticationError for a forged, altered or moved manifest (nothing is unpickled), and
    ValueError (KeyError, TypeError) for a malformed one."""
    opened = unseal(cache_key, data, job=_tag(namespace))
    if opened.kind != _KIND:
        raise PayloadAuthenticationError("it is not a stage cache manifest")
    body = json.loads(bytes(opened.body))
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError(f"manifest format {body.get('format') if isinstance(body, dict) else None!r} is not {FORMAT}")
    if opened.message_id != bytes.fromhex(check_key(key)[:32]) or body.get("key") != key:
        raise PayloadAuthenticationError("it was sealed for another call (moved under this key's name)")
    if stage is not None and body.get("stage") != stage:
        raise PayloadAuthenticationError(f"it was sealed for stage {body.get('stage')!r}")
    return ref_from_json(body["ref"])
