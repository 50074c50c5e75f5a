"""Reproducible random numbers: one independent stream per item, whatever the chunking.

With ``seed=S``, item ``i`` (its position in ``map``, or its submission order)
gets streams derived only from ``(S, i)``:

* ``cloudburst.rng()`` is ``numpy.random.Generator(PCG64(SeedSequence(S, spawn_key=(i,))))``
  — exactly the ``i``-th child of ``SeedSequence(S).spawn(...)``;
* numpy's global generator is seeded from ``SeedSequence(S, spawn_key=(i, 1))``;
* Python's :mod:`random` is seeded from a SHA-256 of ``(S, i)``.

So results do not depend on the number of workers, the chunk size or retries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy

__all__ = [
    "ItemCursor",
    "current_item",
    "enter_task",
    "item_streams",
    "leave_task",
    "python_seed",
    "rng",
    "seed_item",
    "set_index",
    "stage_seed",
]


class ItemCursor:
    """Which call of a task is running, read only when asked: ``indices[len(done)]``, where ``done`` is the
    list of results that grows by one as each call ends. The worker then does no work per call to keep it."""

    __slots__ = ("done", "indices")

    def __init__(self, indices: Sequence[int], done: list[Any]) -> None:
        self.indices, self.done = indices, done

    def index(self) -> int:
        return self.indices[min(len(self.done), len(self.indices) - 1)]


class _Current(threading.local):
    seed: int | None = None
    index: int | None = None  # set for one call (a seeded item, a stage call); else the cursor says
    cursor: ItemCursor | None = None
    generator: Any = None


_current = _Current()
_numpy_present: bool | None = None


def python_seed(seed: int, index: int) -> int:
    """The integer that seeds :mod:`random` for item ``index``."""
    digest = hashlib.sha256(b"cloudburst/random/%d/%d" % (seed, index)).digest()
    return int.from_bytes(digest[:16], "little")


def _numpy_available() -> bool:
    global _numpy_present
    if _numpy_present is None:
        _numpy_present = "numpy" in sys.modules or importlib.util.find_spec("numpy") is not None
    return _numpy_present


def enter_task(cursor: ItemCursor) -> None:
    """Called by the worker as a task starts: ``cursor`` tells which of its calls is running."""
    _current.cursor = cursor
    _current.seed = _current.index = _current.generator = None


def leave_task() -> None:
    """Called by the worker as a task ends."""
    _current.cursor = None
    _current.seed = _current.index = _current.generator = None


def seed_item(seed: int | None, index: int) -> None:
    """Give the running call item ``index``'s streams from ``seed`` (fresh entropy when None)."""
    _current.seed = seed
    _current.index = index
    _current.generator = None
    if seed is None:
        return
    random.seed(python_seed(seed, index))
    if _numpy_available():
        import numpy as np

        np.random.seed(np.random.SeedSequence(seed, spawn_key=(index, 1)).generate_state(4))


@contextmanager
def item_streams(seed: int, index: int) -> Iterator[None]:
    """Item ``index``'s streams from ``seed`` inside the block; the running call's are back after it."""
    saved = (_current.seed, _current.index, _current.generator)
    seed_item(seed, index)
    try:
        yield
    finally:
        _current.seed, _current.index, _current.generator = saved


def set_index(index: int) -> None:
    """Mark this thread as running item ``index`` (as a worker's call does)."""
    _current.index = index


def current_item() -> int | None:
    """The index of the item running in this thread, or None outside a task."""
    if _current.index is not None:
        return _current.index
    cursor = _current.cursor
    return None if cursor is None else cursor.index()


def rng() -> numpy.random.Generator:
    """The running item's own ``numpy.random.Generator``.

    Inside a task of an executor with ``seed=S`` it is reproducible (see the module
    docs); without a seed, or outside a task, it is seeded from fresh entropy.
    """
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - numpy is an optional dependency
        raise ImportError("cloudburst.rng() needs numpy: pip install numpy") from exc
    if _current.generator is None:
        index = current_item()
        if _current.seed is not None and index is not None:
            sequence = np.random.SeedSequence(_current.seed, spawn_key=(index,))
            _current.generator = np.random.Generator(np.random.PCG64(sequence))
        else:
            _current.generator = np.random.default_rng()
    generator: numpy.random.Generator = _current.generator
    return generator


def stage_seed(seed: int, path: str) -> int:
    """The seed of one stage call: derived from the run's ``seed`` and the call's structural path in the
    pipeline, so it does not depend on the order in which stages happened to run."""
    digest = hashlib.sha256(f"cloudburst/stage/{seed}/{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little")
