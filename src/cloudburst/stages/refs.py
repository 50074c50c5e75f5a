"""References to stage values that stay in a store: what travels between the client and workers instead of
the values themselves.

A ``ValueRef`` names a stored value: its content digest (what the cache keys of its consumers use) and its
packed form (``protocol.blobs.Packed``: the pickle inline, or in a blob, plus out-of-band buffer blobs). A
list or tuple stored element by element (for a fan-out) has ``parts`` instead. An ``ArgRef`` stands in a
stage call's arguments for an upstream value; the worker loads it (``stages.remote``). All three pickle as
calls of their constructors: they ride in every stage's task and result messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.blobs import BlobRef, Packed, pickled_as_call

__all__ = ["ArgRef", "StageResult", "ValueRef"]


@pickled_as_call
@dataclass(frozen=True, slots=True)
class ValueRef:
    """A value stored by a stage call: inline pickle bytes or blobs in a store, or ``parts`` (one ref per
    element of a list or tuple, ``kind`` saying which)."""

    digest: str  # valuehash.digest of the value
    packed: Packed | None  # None when the value is stored as parts
    parts: tuple[ValueRef, ...] | None = None
    kind: str = ""  # "list" | "tuple" when parts
    length: int | None = None  # len(value) when the value is sized
    nbytes: int = 0  # bytes stored, inline and in blobs

    def blobs(self) -> tuple[BlobRef, ...]:
        """Every blob the value needs, its parts' included, each once, in order of appearance."""
        found: dict[str, BlobRef] = {}
        pending = [self]
        while pending:
            ref = pending.pop()
            if ref.packed is not None:
                if ref.packed.blob is not None:
                    found.setdefault(ref.packed.blob.digest, ref.packed.blob)
                for buffer in ref.packed.buffers:
                    found.setdefault(buffer.digest, buffer)
            pending.extend(reversed(ref.parts or ()))
        return tuple(found.values())


@pickled_as_call
@dataclass(frozen=True, slots=True)
class ArgRef:
    """Stands in a stage call's arguments for an upstream node's value; the worker replaces it by the value."""

    ref: ValueRef


@pickled_as_call
@dataclass(frozen=True, slots=True)
class StageResult:
    """What a stage call returns to the client: where its value is, and when and where it ran."""

    ref: ValueRef
    worker: str
    started: float  # wall clock (time.time()), from before its inputs were loaded
    ended: float  # wall clock, once its value was stored
