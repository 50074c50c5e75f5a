"""References to stage results kept in a store: what the client holds instead of the values."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.blobs import BlobRef, Packed

__all__ = ["ArgRef", "StageResult", "ValueRef"]


@dataclass(frozen=True)
class ValueRef:
    """A stage result in a store: its content digest and where its bytes are (inline, blobs, or parts)."""

    digest: str
    packed: Packed | None
    parts: tuple[ValueRef, ...] | None = None
    kind: str = ""
    length: int | None = None
    nbytes: int = 0

    def blobs(self) -> tuple[BlobRef, ...]:
        """Every blob the value needs, its parts' included, each once."""
        found: dict[str, BlobRef] = {}
        if self.packed is not None:
            for blob in (self.packed.blob, *self.packed.buffers):
                if blob is not None:
                    found.setdefault(blob.digest, blob)
        for part in self.parts or ():
            for blob in part.blobs():
                found.setdefault(blob.digest, blob)
        return tuple(found.values())


@dataclass(frozen=True)
class ArgRef:
    """Stands in a stage call's arguments for an upstream node's value."""

    ref: ValueRef


@dataclass(frozen=True)
class StageResult:
    """What a stage call returns to the client: its result's ref and when and where it ran."""

    ref: ValueRef
    worker: str
    started: float
    ended: float
