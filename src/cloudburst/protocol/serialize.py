"""Moving Python objects between the client and workers.

::

    object ─► cloudpickle (protocol 5) ─► in-band pickle bytes ─► inline in the message,
                                      │                         or a blob when too big
                                      └► out-of-band buffers ≥ 1 MiB (numpy, pandas, Arrow)
                                          ─► content-addressed blobs (sha256), each stored once

* Every message is sealed under the job's key (``sealing``); nothing is unpickled
  before its seal checks out. Blobs are named by their sha256 (``blobs``), and the
  names travel inside sealed messages, so a blob is authenticated by re-hashing it
  before use.
* A buffer or a large argument that many tasks share is stored once per job:
  blobs are found by content, so an argument changed between two tasks travels
  as it is then. The packer keeps no reference to the caller's objects.
* Workers map large buffers copy-on-write (``mmap.ACCESS_COPY``): each task gets
  a writable array without a copy, and a task's writes are private to it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import mmap
import pickle
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from ..backends.base import Store
from ..errors import PayloadAuthenticationError, PicklingError, UnpicklingError
from .blobs import BlobRef, Packed, compress, decompress
from .pickling import PROTOCOL, SharingPickler, ship_module_by_value

__all__ = ["BUFFER_MIN_BYTES", "BlobRef", "Packed", "Packer", "Unpacker", "describe"]

BUFFER_MIN_BYTES = 1 << 20  # out-of-band buffers at least this big become blobs
SHARE_MIN_BYTES = 64 << 10  # a repeated argument that pickles to this much becomes a blob
REPEATED_SHARE_MIN_BYTES = 8 << 10  # the same, for one said to repeat: its first copy is not sent inline
COMPRESS_MIN_BYTES = 64 << 10
_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex, range, slice})


def describe(obj: object, limit: int = 80) -> str:
    """A short, safe description of an object for error messages."""
    try:
        text = repr(obj)
    except Exception:
        text = object.__repr__(obj)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__} {text}"


# ---------------------------------------------------------------------------- packing (client or worker)


class Packer:
    """Serializes objects for one job, storing large parts once in the job's store."""

    def __init__(self, store: Store, *, inline_limit: int, compress: bool = True) -> None:
        self._store = store
        self._inline_limit = inline_limit
        self._compress = compress
        self._lock = threading.Lock()
        # Nothing here outlives the caller's objects. Blobs are found by content; an argument is remembered
        # by identity only while a task in flight carries it, so one changed after its tasks finished
        # travels as it is then.
        self._stored: set[str] = set()
        self._by_content: dict[str, BlobRef] = {}  # sha256 of the bytes before compression -> blob
        self._functions: dict[int, tuple[weakref.ref[Any], BlobRef]] = {}  # id(fn) -> blob, dropped when it dies
        self._seen: collections.OrderedDict[int, _Sighting] = collections.OrderedDict()  # large args seen lately
        # task in flight -> id(arg) -> (arg, its holder); the task holds its arguments, and the entry goes with it
        self._in_flight: weakref.WeakKeyDictionary[object, dict[int, tuple[object, Packed]]] = (
            weakref.WeakKeyDictionary()
        )
        self.bytes_serialized = 0  # everything written: inline payloads and new blobs

    @property
    def store(self) -> Store:
        """The store its blobs go to."""
        return self._store

    # -- blobs
    def put_blob(self, data: bytes | memoryview) -> BlobRef:
        raw = memoryview(data).cast("B")
        content = hashlib.sha256(raw).hexdigest()
        with self._lock:
            known = self._by_content.get(content)
        if known is not None:
            return known  # stored before: not compressed or written again
        zipped = compress(raw) if self._compress and raw.nbytes >= COMPRESS_MIN_BYTES else None
        stored: bytes | memoryview = zipped if zipped is not None else raw
        digest = hashlib.sha256(stored).hexdigest() if zipped is not None else content
        ref = BlobRef(digest, memoryview(stored).nbytes, zipped is not None)
        with self._lock:
            if digest in self._stored:
                self._by_content[content] = ref
                return ref
        if not self._store.exists(ref.key):
            self._store.put(ref.key, stored)
        with self._lock:
            self._stored.add(digest)
            self._by_content[content] = ref
            self.bytes_serialized += ref.size
        return ref

    def _buffer_callback(self, refs: list[BlobRef]) -> Callable[[pickle.PickleBuffer], bool]:
        def callback(buf: pickle.PickleBuffer) -> bool:
            view = buf.raw()
            if view.nbytes < BUFFER_MIN_BYTES:
                return True  # small: keep in-band
            refs.append(self.put_blob(view))  # hashed each time (~1.7 GB/s), stored once
            return False

        return callback

    def pack(
        self,
        obj: object,
        *,
        shared: Mapping[int, Packed] | None = None,
        keep_code_names: bool = False,
        plain: bool = False,
        inline_limit: int | None = None,
        counted: bool = True,
    ) -> Packed:
        """Pickle ``obj``; raise :class:`PicklingError` naming it on failure. ``plain``: the caller knows it
        holds only numbers, strings and builtin containers, which plain pickle writes as cloudpickle would, faster.
        ``inline_limit``: a pickle bigger than this goes to a blob (default: the packer's own limit).
        ``counted=False``: its inline bytes are not sent as they are (they go into a blob of their own), so they
        do not count in ``bytes_serialized``."""
        packed = self._pickled(obj, shared, keep_code_names, plain, inline_limit)
        if counted and packed.inline is not None:
            with self._lock:
                self.bytes_serialized += len(packed.inline)  # sent in its message (blobs count as they are stored)
        return packed

    def _pickled(
        self,
        obj: object,
        shared: Mapping[int, Packed] | None,
        keep_code_names: bool,
        plain: bool,
        inline_limit: int | None,
    ) -> Packed:
        limit = self._inline_limit if inline_limit is None else inline_limit
        if plain:
            return self._finish(pickle.dumps(obj, protocol=PROTOCOL), (), codec=b"P", limit=limit)
        refs: list[BlobRef] = []
        callback = self._buffer_callback(refs)
        if shared or keep_code_names:
            stream = io.BytesIO()
            SharingPickler(stream, shared or {}, buffer_callback=callback).dump(obj)
            data = stream.getvalue()
        else:
            data = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
        return self._finish(data, tuple(refs), limit=limit)

    def _finish(self, data: bytes, buffers: tuple[BlobRef, ...], codec: bytes = b"R", *, limit: int) -> Packed:
        """Inline (``codec`` + pickle; ``P``: plain pickle, loaded without a reference hook) or a blob."""
        if len(data) > limit:
            return Packed(None, self.put_blob(data), buffers)
        if self._compress and len(data) >= COMPRESS_MIN_BYTES:
            zipped = compress(data)
            if zipped is not None:
                data = b"Z" + zipped
            else:
                data = b"R" + data
        else:
            data = codec + data
        return Packed(data, None, buffers)

    def function(self, fn: Callable[..., object]) -> BlobRef:
        """The blob of a function, pickled once per job (by value where the worker can't import it)."""
        cached = self._functions.get(id(fn))
        if cached is not None and cached[0]() is fn:
            return cached[1]
        ship_module_by_value(fn)
        try:
            packed = self.pack(fn, keep_code_names=True, counted=False)  # remote tracebacks then show source lines
        except Exception as exc:
            raise PicklingError(
                f"cannot send the function {_name_of(fn)} to workers: {type(exc).__name__}: {exc}. "
                "Functions must be picklable by cloudpickle; objects they capture (open files, locks, "
                "database connections) must be created inside the function instead."
            ) from exc
        # A function is always one blob holding its Packed form, so workers cache it by digest.
        ref = self.put_blob(pickle.dumps(packed, protocol=PROTOCOL))
        # Remembered while fn lives. A bound method is a new object each time it is looked up, so it
        # is pickled again each time (cheaply: same bytes, same blob) rather than pinning its object.
        _remember(self._functions, fn, ref)
        return ref

    def shared_arguments(
        self, calls: list[tuple[tuple[object, ...], dict[str, object] | None]], task: object | None = None
    ) -> dict[int, Packed]:
        """Find large arguments repeated across items and store each once.

        An argument seen before whose pickle (buffers included) is at least SHARE_MIN_BYTES is
        stored as its own blob; returns ``id -> Packed`` for the pickler to reference. "Seen before"
        is checked by identity through a weak reference, or for an argument that has none (a list,
        a dict) by its id, type and length; its blob is found by content, so a wrong guess costs a
        pickle, never a wrong value.

        An argument is pickled again for each ``task`` (the object that stands for it while it is
        in flight), unless another task in flight carries it: then its blob is reused. So a large
        array fanned out to many tasks is hashed once, and one changed after its tasks finished
        travels as it is now (changed while they run, it is a race, as with any executor).
        """
        with self._lock:
            in_flight = list(self._in_flight.values())
            mine = self._in_flight.setdefault(task, {}) if task is not None else {}
        found: dict[int, Packed] = {}
        for args, kwargs in calls:
            values: tuple[object, ...] | list[object] = args if not kwargs else [*args, *kwargs.values()]
            for value in values:
                if type(value) in _SCALARS or id(value) in found:
                    continue
                holder = _carried(in_flight, value) or self._shared_holder(value)
                if holder is not None:
                    found[id(value)] = holder
                    mine[id(value)] = (value, holder)
        return found

    def expect_repeats(self, values: Iterable[object]) -> None:
        """Say that ``values`` will be passed to many calls (joblib's batches share ``X`` and ``y``): each is
        stored once, as a blob of its own, from its first call on, if it pickles to REPEATED_SHARE_MIN_BYTES."""
        with self._lock:
            for value in values:
                if type(value) not in _SCALARS and hasattr(value, "__len__"):
                    try:
                        self._seen[id(value)] = _Sighting.of(value, repeats=True)
                    except Exception:
                        continue  # no length after all (an unfitted estimator's __len__ raises)
                    self._seen.move_to_end(id(value))
                    if len(self._seen) > 256:
                        self._seen.popitem(last=False)

    def _shared_holder(self, value: object) -> Packed | None:
        """The holder of ``value``'s shared blob, or None when it is not (yet) worth sharing."""
        ident = id(value)
        with self._lock:
            seen = self._seen.get(ident)
            expected = seen is not None and seen.repeats and seen.matches(value)
        if not expected and not _looks_large(value):
            return None
        with self._lock:  # the dispatcher and the manager (resending a dead worker's tasks) both pack
            seen = self._seen.get(ident)
            if seen is None or not seen.matches(value):  # first sighting: it travels with its task
                self._seen[ident] = _Sighting.of(value)
                if len(self._seen) > 256:
                    self._seen.popitem(last=False)
                return None
            self._seen.move_to_end(ident)
            if seen.small:
                return None
        packed = self.pack(value, counted=False)
        if packed.nbytes + sum(ref.size for ref in packed.buffers) < (
            REPEATED_SHARE_MIN_BYTES if seen.repeats else SHARE_MIN_BYTES
        ):
            with self._lock:
                self._seen[ident] = _Sighting(seen.weak, seen.kind, seen.length, small=True)
            return None
        return Packed(None, self.put_blob(pickle.dumps(packed, protocol=PROTOCOL)))


def _carried(in_flight: list[dict[int, tuple[object, Packed]]], value: object) -> Packed | None:
    """The holder of ``value`` in a task still in flight, if one carries it."""
    for entries in in_flight:
        entry = entries.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
    return None


@dataclass(frozen=True, slots=True)
class _Sighting:
    """A large argument seen lately: a weak reference to it, or its type and length when it has none."""

    weak: weakref.ref[Any] | None
    kind: type
    length: int
    small: bool = False  # its pickle is too small to be worth a blob of its own
    repeats: bool = False  # said to repeat (Packer.expect_repeats): shared from its first call

    @classmethod
    def of(cls, value: object, *, repeats: bool = False) -> _Sighting:
        try:
            weak: weakref.ref[Any] | None = weakref.ref(value)
        except TypeError:
            weak = None
        return cls(weak, type(value), len(value), repeats=repeats)  # type: ignore[arg-type]

    def matches(self, value: object) -> bool:
        if self.weak is not None:
            return self.weak() is value
        return type(value) is self.kind and len(value) == self.length  # type: ignore[arg-type]


def _remember(cache: dict[int, tuple[weakref.ref[Any], BlobRef]], obj: object, value: BlobRef) -> None:
    """``cache[id(obj)] = (weak reference, value)`` until obj dies; nothing when obj has no weak references."""
    ident = id(obj)

    def forget(weak: weakref.ref[Any]) -> None:
        entry = cache.get(ident)
        if entry is not None and entry[0] is weak:
            del cache[ident]

    try:
        cache[ident] = (weakref.ref(obj, forget), value)
    except TypeError:
        pass


def _looks_large(value: object) -> bool:
    try:
        return len(value) >= 1000  # type: ignore[arg-type]
    except Exception:
        return False


def _name_of(fn: object) -> str:
    module = getattr(fn, "__module__", "?")
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}"


# ---------------------------------------------------------------------------- unpacking


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, unpacker: Unpacker, buffers: list[object]) -> None:
        super().__init__(file, buffers=buffers)
        self._unpacker = unpacker
        self._loaded: dict[Packed, object] = {}  # pickle repeats a persistent id at each reference

    def persistent_load(self, pid: object) -> object:
        if not isinstance(pid, Packed):
            raise pickle.UnpicklingError(f"unexpected persistent id {type(pid).__name__}")
        if pid not in self._loaded:  # one object per task, as the argument was one object in the client
            self._loaded[pid] = self._unpacker.unpack(self._unpacker.load_holder(pid))
        return self._loaded[pid]


def _sha256_of_file(path: Path) -> str:
    """The file's sha256, read through one small buffer: large reads from a thread would leave their
    memory in that thread's malloc arena (glibc), where the process's RSS keeps it."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


_KEEP_MAX_BYTES = 64 << 10  # a holder is a few hundred bytes; a function's own pickle may be inline in it
_KEPT_MAX_BYTES = 16 << 20


class Unpacker:
    """Loads ``Packed`` objects, fetching and verifying blobs through the store."""

    def __init__(self, store: Store, cache_dir: Path) -> None:
        self._store = store
        self._cache_dir = cache_dir
        self._files: dict[str, Path] = {}
        self._small: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._small_bytes = 0
        self._functions: dict[str, object] = {}
        self._lock = threading.Lock()

    def _verified_file(self, ref: BlobRef) -> Path:
        path = self._files.get(ref.digest)
        if path is not None:
            return path
        path = self._store.get_file(ref.key, self._cache_dir)
        if _sha256_of_file(path) != ref.digest:
            raise PayloadAuthenticationError(
                f"blob {ref.digest[:12]} does not match its sha256 (altered in the store); it was not used"
            )
        if ref.zstd:
            # Written aside, then renamed: another thread may be mapping the same blob.
            plain = self._cache_dir / f"{ref.digest}.raw"
            partial = self._cache_dir / f"{ref.digest}.{threading.get_ident()}.part"
            partial.write_bytes(decompress(path.read_bytes()))
            partial.replace(plain)
            path = plain
        self._files[ref.digest] = path
        return path

    def blob_bytes(self, ref: BlobRef, *, keep: bool = False) -> bytes:
        """A blob's bytes; ``keep`` caches a small one (a holder, read by every task that names it).

        Payloads are never cached: a result's bytes must go when its caller drops the result.
        """
        with self._lock:
            data = self._small.get(ref.digest)
            if data is not None:
                self._small.move_to_end(ref.digest)
                return data
        data = self._verified_file(ref).read_bytes()
        if keep and len(data) <= _KEEP_MAX_BYTES:
            with self._lock:
                if ref.digest not in self._small:
                    self._small[ref.digest] = data
                    self._small_bytes += len(data)
                while self._small_bytes > _KEPT_MAX_BYTES and len(self._small) > 1:
                    _, old = self._small.popitem(last=False)
                    self._small_bytes -= len(old)
        return data

    def blob_buffer(self, ref: BlobRef) -> object:
        """A private, writable, zero-copy view of a buffer blob."""
        path = self._verified_file(ref)
        if ref.size == 0 or path.stat().st_size == 0:
            return bytearray()
        with open(path, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)

    def load_holder(self, holder: Packed) -> Packed:
        """A function or shared argument is stored as a pickled ``Packed``; read it."""
        if holder.blob is None:
            raise UnpicklingError("malformed reference to a shared object")
        inner = pickle.loads(self.blob_bytes(holder.blob, keep=True))
        if not isinstance(inner, Packed):
            raise UnpicklingError("malformed shared object")
        return inner

    def unpack(self, packed: Packed) -> object:
        """Load an object. Errors propagate as raised by pickle; callers name what failed."""
        if packed.inline is not None:
            if packed.inline[:1] == b"P":  # plain values, inside an authenticated message: nothing to resolve
                return pickle.loads(memoryview(packed.inline)[1:])
            codec, data = packed.inline[:1], packed.inline[1:]
            payload = decompress(data) if codec == b"Z" else data
        elif packed.blob is not None:
            payload = self.blob_bytes(packed.blob)
        else:
            raise UnpicklingError("malformed payload: neither inline nor a blob")
        buffers = [self.blob_buffer(ref) for ref in packed.buffers]
        return _RefUnpickler(io.BytesIO(payload), self, buffers).load()

    def function(self, ref: BlobRef) -> object:
        fn = self._functions.get(ref.digest)
        if fn is None:
            fn = self.unpack(self.load_holder(Packed(None, ref)))
            self._functions[ref.digest] = fn
        return fn
