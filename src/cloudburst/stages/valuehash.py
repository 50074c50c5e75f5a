"""Content digests of values: the globals and closure variables a stage reads, its arguments, its results.

``digest(obj)`` is ``sha256("cbv1" ‖ pickle stream ‖ digests of the out-of-band buffers)``. A cloudpickle
pickler (protocol 5) writes straight into the hash, so nothing is kept in memory, and large buffers
(numpy arrays, bytes-like data) are hashed in place, not copied. The stream is made canonical:

- sets and frozensets become their elements in a fixed order (sorted, or sorted by element digest): the
  order of a set follows string hashing, which changes from one process to the next;
- the user's own functions and classes (``is_code``, from ``codehash``) become their name, and are handed
  back with the digest (``digest_code``): the caller hashes their code the way it hashes a stage's, so
  code inside a value counts, formatting and comments excepted;
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
HINT = "create it inside the stage, or give the stage a version= (its code is then not hashed either)"

IsCode = Callable[[object], bool]
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
        is_code = self._owner.is_code
        if isinstance(obj, (types.FunctionType, type)) and is_code is not None and is_code(obj):
            self._owner.met.append(obj)
            return ("cbcode", obj.__module__, obj.__qualname__)
        if self._owner.substitute is not None:
            ref = self._owner.substitute(obj)
            if ref is not None:
                return ("cbref", ref)
        return None


class ValueHasher:
    """Digests values for one compute, each object once (memoized by identity). Not thread-safe.

    ``is_code`` tells the user's own functions and classes, which a digest names and hands back;
    ``substitute`` gives the digest of an object that stands for another value, such as an upstream node.
    The memo keeps the objects it has seen alive, so an identity is never reused while it lasts:
    use one hasher per compute, not across mutations of the values.
    """

    def __init__(self, *, is_code: IsCode | None = None, substitute: Substitute | None = None) -> None:
        self.is_code = is_code
        self.substitute = substitute
        self.met: list[object] = []  # user code met by the digest under way
        self._memo: dict[int, tuple[object, str, tuple[object, ...]]] = {}

    def digest(self, obj: object, *, where: str = "a value", hint: str = HINT) -> str:
        """The content digest of ``obj`` (64 hex digits); user code in it counts by name only (see
        ``digest_code``)."""
        return self.digest_code(obj, where=where, hint=hint)[0]

    def digest_code(self, obj: object, *, where: str = "a value", hint: str = HINT) -> tuple[str, tuple[object, ...]]:
        """The content digest of ``obj``, and the user functions and classes inside it, in the order met.

        Raises ``StageHashError`` naming ``where`` (e.g. "global `db` of module `etl`") and ``hint``
        when ``obj`` cannot be pickled.
        """
        seen = self._memo.get(id(obj))
        if seen is not None and seen[0] is obj:
            return seen[1], seen[2]
        self.met = []
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
        met = tuple({id(code): code for code in self.met}.values())
        self._memo[id(obj)] = (obj, result, met)
        return result, met

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


def digest(obj: object, *, where: str = "a value", hint: str = HINT) -> str:
    """The content digest of ``obj``, user code inside it hashed as ``codehash`` hashes a stage's.

    A fresh hasher each call; a compute keeps one ``CodeHasher`` instead.
    """
    from .codehash import CodeHasher  # codehash imports this module: imported when first used

    return CodeHasher().value_digest(obj, where=where, hint=hint)


def preview(obj: object) -> str | None:
    """A short ``repr`` of a small scalar, for explanations ("1000 → 2000"); ``None`` for anything else."""
    if type(obj) not in _PREVIEW_TYPES:
        return None
    text = repr(obj)
    return text if len(text) <= _PREVIEW_LENGTH else None
