"""What a serialized object is made of: content-addressed blobs (``BlobRef``) and the packed form of an
object (``Packed``: its pickle inline or in a blob, plus its out-of-band buffers), and the zstd codec of
blobs and inline payloads.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import TypeVar

__all__ = ["BlobRef", "Packed", "compress", "decompress", "pickled_as_call"]

_C = TypeVar("_C", bound=type)


def pickled_as_call(cls: _C) -> _C:
    """Pickle a dataclass as a call of its constructor with its field values: several times
    cheaper than the default for slotted dataclasses, which matters for messages on every task."""
    names = [f.name for f in fields(cls)]
    getter = operator.attrgetter(*names)
    # attrgetter of one name returns its value, not a 1-tuple
    values = getter if len(names) > 1 else lambda obj: (getter(obj),)

    def __reduce__(self: object) -> tuple[object, ...]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign, assignment]
    return cls


@pickled_as_call
@dataclass(frozen=True, slots=True)
class BlobRef:
    """A content-addressed blob: ``digest`` is the sha256 of the stored bytes."""

    digest: str
    size: int
    zstd: bool = False

    @property
    def key(self) -> str:
        """Where the blob is in the job's store."""
        return f"blobs/{self.digest}"


@pickled_as_call
@dataclass(frozen=True, slots=True)
class Packed:
    """A serialized object: pickle bytes inline or in a blob, plus out-of-band buffer blobs."""

    inline: bytes | None
    blob: BlobRef | None
    buffers: tuple[BlobRef, ...] = ()

    @property
    def nbytes(self) -> int:
        """The bytes of its pickle, inline or in its blob (its buffers not counted)."""
        return len(self.inline or b"") + (self.blob.size if self.blob else 0)


def compress(data: bytes | memoryview) -> bytes | None:
    """zstd-compress ``data`` when it is worth it (a sample compresses well), else None."""
    import zstandard  # not at the top: only large payloads need it

    sample = bytes(data[: 256 << 10])
    if len(zstandard.ZstdCompressor(level=1).compress(sample)) > 0.9 * len(sample):
        return None
    return zstandard.ZstdCompressor(level=3, threads=-1).compress(bytes(data))


def decompress(data: bytes) -> bytes:
    """The bytes ``compress`` was given."""
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)
