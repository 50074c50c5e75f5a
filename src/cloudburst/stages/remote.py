"""A stage call as it runs on a worker, and the client's side of its stored values.

``executor.submit(StageCall(fn, name, seed), index, args, kwargs)`` runs on a worker of that executor. There
``StageCall`` replaces each ``ArgRef`` in the arguments by its value, read from the worker's job store (blobs
verified by their sha256, as every blob is); seeds the call from ``(seed, index)``; runs the stage's function;
digests the value (``valuehash.digest``: what its consumers' cache keys use) and stores it with the worker's
``Packer``: inline when it pickles small, else as blobs in the job store. The client gets back a small
``StageResult``, never the value: ``load_value`` reads a value when the client needs it, and ``copy_blobs``
moves one to another store (another executor's, or the cache's) without passing through the client when
the stores allow it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import seeds
from ..backends.base import Store
from ..errors import PicklingError, UnpicklingError
from ..protocol.serialize import Packer, Unpacker, describe
from ..worker import context
from . import transfer, valuehash
from .refs import ArgRef, StageResult, ValueRef

__all__ = ["INLINE_LIMIT", "StageCall", "copy_blobs", "load_value"]

#: a value whose pickle is bigger goes to a blob: results ride in messages the client keeps while a run lasts
INLINE_LIMIT = 64 << 10
_COPIES = 8  # blobs copied at once
_HINT = "return plain data (numbers, strings, arrays, data frames, containers of them) instead"


@dataclass(frozen=True)
class StageCall:
    """One call of a stage, as sent to a worker: ``fn`` is the stage's function, ``name`` names it in errors.

    ``seed``: the call's random streams come from ``(seed, index)`` (see ``cloudburst.seeds``), whatever the
    executor's own seed. ``elements``: a list or tuple value is stored element by element (``ValueRef.parts``),
    so that a fan-out over it sends each call only its element.
    """

    fn: Callable[..., Any]
    name: str
    seed: int | None = None
    elements: bool = False

    def __call__(
        self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any], seed: int | None = None
    ) -> StageResult:
        """Run the call on this worker and store its value; only inside a cloudburst worker. ``seed``, when
        given, stands for the call's own ``self.seed``: one StageCall then serves every call of a stage, and
        its function is pickled once per job."""
        here = context.current()
        if here is None:
            raise RuntimeError(
                f"stage {self.name}: a StageCall runs only on a cloudburst worker (submit it to an Executor); "
                "to run the stage's function here, call it directly"
            )
        started = time.time()
        call_args, call_kwargs = _load_arguments(args, kwargs, here.unpacker)
        seed = self.seed if seed is None else seed
        with seeds.item_streams(seed, index) if seed is not None else contextlib.nullcontext():
            value = self.fn(*call_args, **call_kwargs)  # the stage's own streams win over the worker's item's
        del call_args, call_kwargs
        ref = self.store(value, here.packer)
        return StageResult(ref, here.worker_id, started, time.time())

    def store(self, value: object, packer: Packer) -> ValueRef:
        """The stored ``value``: as parts when ``elements`` and it is a list or tuple, else whole."""
        kind = type(value)
        if not (self.elements and kind in (list, tuple)):
            return self._store_one(value, packer)
        items: list[Any] | tuple[Any, ...] = value  # type: ignore[assignment]
        parts = tuple(self._store_one(item, packer, f"element {i} of ") for i, item in enumerate(items))
        digest = self._digest(value)
        total = sum(part.nbytes for part in parts)
        return ValueRef(digest, None, parts, kind.__name__, len(items), total)

    def _store_one(self, value: object, packer: Packer, what: str = "") -> ValueRef:
        digest = self._digest(value, what)
        try:
            packed = packer.pack(value, inline_limit=INLINE_LIMIT)
        except Exception as exc:
            raise self._unstorable(value, what, exc) from exc
        nbytes = packed.nbytes + sum(buffer.size for buffer in packed.buffers)
        return ValueRef(digest, packed, length=_length(value), nbytes=nbytes)

    def _digest(self, value: object, what: str = "") -> str:
        try:
            return valuehash.digest(value, where=f"{what}the result of stage {self.name}", hint=_HINT)
        except Exception as exc:  # StageHashError, or whatever a __reduce__ raised
            raise self._unstorable(value, what, exc.__cause__ or exc) from exc

    def _unstorable(self, value: object, what: str, exc: BaseException) -> PicklingError:
        return PicklingError(
            f"{what}the result of stage {self.name} cannot be pickled or hashed: {describe(value)}: "
            f"{type(exc).__name__}: {exc}; {_HINT}"
        )


def _load_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], unpacker: Unpacker
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with their ``ArgRef``s loaded; a value that several of them name is loaded once."""
    loaded: dict[ValueRef, object] = {}

    def load(ref: ValueRef) -> object:
        if ref not in loaded:
            loaded[ref] = load_value(ref, unpacker)
        return loaded[ref]

    return _resolve(args, load), _resolve(kwargs, load)


def _resolve(obj: Any, load: Callable[[ValueRef], object]) -> Any:
    """``obj`` with each ``ArgRef`` in it (inside lists, tuples and dicts, not other containers) loaded."""
    kind = type(obj)
    if kind is ArgRef:
        return load(obj.ref)
    if kind is list:
        return [_resolve(item, load) for item in obj]
    if kind is tuple:
        return tuple(_resolve(item, load) for item in obj)
    if kind is dict:
        return {key: _resolve(item, load) for key, item in obj.items()}
    return obj


def _length(value: object) -> int | None:
    try:
        return len(value)  # type: ignore[arg-type]
    except Exception:  # not sized (or a 0-d array, whose len() raises)
        return None


def load_value(ref: ValueRef, unpacker: Unpacker) -> object:
    """The value ``ref`` names, read through ``unpacker`` (blobs verified by their sha256 before use); a value
    stored as parts comes back whole, as the list or tuple it was."""
    if ref.parts is not None:
        items = [load_value(part, unpacker) for part in ref.parts]
        return tuple(items) if ref.kind == "tuple" else items
    if ref.packed is None:
        raise UnpicklingError(f"malformed value reference {ref.digest[:12]}: neither packed nor in parts")
    return unpacker.unpack(ref.packed)


def copy_blobs(ref: ValueRef, src: Store, dst: Store) -> None:
    """Copy every blob of ``ref`` from ``src`` to ``dst`` (same keys), server-side when the stores allow it;
    several at once (a fanned-out list has a blob per element, and each copy is a request or two)."""
    blobs = ref.blobs()
    if len(blobs) <= 1:
        for blob in blobs:
            transfer.copy_blob(src, blob.key, dst, blob.key)
        return
    with ThreadPoolExecutor(min(_COPIES, len(blobs)), thread_name_prefix="cloudburst-copy") as pool:
        for done in [pool.submit(transfer.copy_blob, src, blob.key, dst, blob.key) for blob in blobs]:
            done.result()  # the first failure raises; the pool finishes the others before it goes
