"""Content digests of values: the globals and closure variables a stage reads, its arguments, its results.

``digest(obj)`` is ``sha256("cbv1" ‖ pickle stream ‖ digests of the out-of-band buffers)``. A cloudpickle
pickler (protocol 5) writes straight into the hash, so nothing is kept in memory, and large buffers
(numpy arrays, bytes-like data) are hashed in place, not copied. The stream is made canonical:

- sets and frozensets become their elements in a fixed order (sorted, or sorted by element digest): the
  order of a set follows string hashing, which changes from one process to the next;
- the user's own functions and classes become their code digest (``code_digest``, from ``codehash``), so
  code inside a value counts the way a stage's own code counts, formatting and comments excepted;
- objects that stand for another value (an upstream node, a stored result) become the digest that
  ``substitute`` gives for them, so a key never depends on where a value happens to live;
- the pickle memo is off, so equal content gives equal bytes whatever objects it happens to share;
  a cyclic value (which needs the memo) is hashed again with it.

Two values with one digest are equal for the cache; equal values may still differ in digest (a dict
built in another order, an object whose pickle embeds an id): that is a rerun, never a wrong hit.
"""

from __future__ import annotations

import hashlib
import pickle
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from ..errors import StageHashError

__all__ = ["ValueHasher", "digest", "preview"]

_PROTOCOL = 5
_PREFIX = b"cbv1"
# Exact types that never need a persistent id: the fast path of `persistent_id`.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), list, tuple, dict, complex, bytearray})
_SORTABLE = (str, bytes, int)
_PREVIEW_TYPES = (int, float, complex, bool, str, bytes, type(None))
_PREVIEW_LENGTH = 60
_HINT = "create it inside the stage, or give the stage a version= (its code is then not hashed either)"

CodeDigest = Callable[[object], "str | None"]
Substitute = Callable[[object], "str | None"]


class _HashWriter:
    """The pickler's file: every write goes into the hash and is dropped."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256(_PREFIX)
        self.buffers: list[bytes] = []

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        return len(data)

    def buffer(self, buf: pickle.PickleBuffer) -> bool:
        # Hashed where it lies (no copy); appended after the stream, so stream and buffers cannot run together.
        with buf.raw() as view:
            self.buffers.append(hashlib.sha256(view).digest())
        return False  # keep it out of band: the stream holds only a NEXT_BUFFER opcode

    def hexdigest(self) -> str:
        for buffer_digest in self.buffers:
            self.hash.update(buffer_digest)
        return self.hash.hexdigest()


class _HashingPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """A cloudpickle pickler whose stream is canonical for hashing (see the module docstring)."""

    def __init__(self, writer: _HashWriter, owner: ValueHasher, *, memo: bool) -> None:
        super().__init__(writer, protocol=_PROTOCOL, buffer_callback=writer.buffer)
        self.fast = not memo
        self._owner = owner

    def persistent_id(self, obj: Any) -> object:
        kind = type(obj)
        if kind in _PLAIN:
            return None
        if kind is set or kind is frozenset:
            return ("cbset", kind.__name__, *self._owner.ordered(obj))
        if isinstance(obj, (types.FunctionType, type)) and self._owner.code_digest is not None:
            code = self._owner.code_digest(obj)
            if code is not None:
                return ("cbcode", code)
        if self._owner.substitute is not None:
            ref = self._owner.substitute(obj)
            if ref is not None:
                return ("cbref", ref)
        return None


class ValueHasher:
    """Digests values for one compute, each object once (memoized by identity).

    ``code_digest`` gives the digest of a user function or class (``None`` for other objects);
    ``substitute`` the digest of an object that stands for another value, such as an upstream node.
    The memo keeps the objects it has seen alive, so an identity is never reused while it lasts:
    use one hasher per compute, not across mutations of the values.
    """

    def __init__(self, *, code_digest: CodeDigest | None = None, substitute: Substitute | None = None) -> None:
        self.code_digest = code_digest
        self.substitute = substitute
        self._memo: dict[int, tuple[object, str]] = {}

    def digest(self, obj: object, *, where: str = "a value", hint: str = _HINT) -> str:
        """The content digest of ``obj`` (64 hex digits).

        Raises ``StageHashError`` naming ``where`` (e.g. "global `db` of module `etl`") and ``hint``
        when ``obj`` cannot be pickled.
        """
        seen = self._memo.get(id(obj))
        if seen is not None and seen[0] is obj:
            return seen[1]
        try:
            try:
                result = self._hash(obj, memo=False)
            except ValueError as exc:  # fast mode refuses cyclic values: hash them with the memo
                if "cyclic" not in str(exc):
                    raise
                result = self._hash(obj, memo=True)
        except StageHashError:
            raise
        except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
            raise StageHashError(f"{where} cannot be hashed for the cache key ({kind}: {exc}); {hint}") from exc
        self._memo[id(obj)] = (obj, result)
        return result

    def ordered(self, items: set[Any] | frozenset[Any]) -> tuple[str, tuple[object, ...]]:
        """The elements of a set in an order that does not depend on the process: ``("sorted", elements)``
        when they are all strings, all bytes or all integers, else ``("digests", their digests sorted)``."""
        for kind in _SORTABLE:
            if all(type(item) is kind for item in items):
                return ("sorted", tuple(sorted(items)))
        return ("digests", tuple(sorted(self._hash(item, memo=False) for item in items)))

    def _hash(self, obj: object, *, memo: bool) -> str:
        writer = _HashWriter()
        _HashingPickler(writer, self, memo=memo).dump(obj)
        return writer.hexdigest()


def digest(obj: object, *, where: str = "a value", hint: str = _HINT) -> str:
    """The content digest of ``obj``, user code inside it hashed as ``codehash`` hashes it.

    A fresh hasher each call; a compute keeps one ``CodeHasher`` (and its ``values``) instead.
    """
    from .codehash import CodeHasher  # codehash imports this module: imported when first used

    return CodeHasher().values.digest(obj, where=where, hint=hint)


def preview(obj: object) -> str | None:
    """A short ``repr`` of a small scalar, for explanations ("1000 → 2000"); ``None`` for anything else."""
    if type(obj) not in _PREVIEW_TYPES:
        return None
    text = repr(obj)
    return text if len(text) <= _PREVIEW_LENGTH else None
