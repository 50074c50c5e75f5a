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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy

__all__ = ["current_item", "python_seed", "rng", "seed_item", "set_index", "stage_seed"]


class _Current(threading.local):
    seed: int | None = None
    index: int | None = None
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


def seed_item(seed: int | None, index: int) -> None:
    """Called by the worker before each item runs."""
    _current.seed = seed
    _current.index = index
    _current.generator = None
    if seed is None:
        return
    random.seed(python_seed(seed, index))
    if _numpy_available():
        import numpy as np

        np.random.seed(np.random.SeedSequence(seed, spawn_key=(index, 1)).generate_state(4))


def set_index(index: int) -> None:
    """Called by the worker before each item runs when there is no seed (cheaper than seed_item)."""
    _current.index = index


def current_item() -> int | None:
    """The index of the item running in this thread, or None outside a task."""
    return _current.index


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
        if _current.seed is not None and _current.index is not None:
            sequence = np.random.SeedSequence(_current.seed, spawn_key=(_current.index,))
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
