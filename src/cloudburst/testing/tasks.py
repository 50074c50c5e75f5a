"""What the contract suite sends to workers: plain functions of an importable module without pytest."""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import cloudburst

#: the item the failure table makes bad
BAD = 2


def square(x: int) -> int:
    """x²."""
    return x * x


def add(x: int, y: int, *, scale: int = 1) -> int:
    """(x + y) × scale."""
    return (x + y) * scale


def sleep_then(x: Any, seconds: float) -> Any:
    """``x``, after ``seconds``."""
    time.sleep(seconds)
    return x


def fail_on(x: int, bad: int) -> int:
    """``x``, or ValueError when it is ``bad``."""
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def wait_for(x: Any, path: str, timeout: float = 300.0) -> Any:
    """``x``, once the file ``path`` exists (a gate the test opens; the timeout only ends a forgotten one)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return x


def talk(x: int) -> int:
    """Prints to stdout and stderr, logs a warning and warns."""
    print(f"hello from {x}")
    print(f"to stderr {x}", file=sys.stderr)
    logging.getLogger("a_users_module").warning("log record %d", x)
    warnings.warn(f"careful with {x}", RuntimeWarning, stacklevel=1)
    return x


def warn_and_print(x: int) -> int:
    """The same warning every time (a process shows it once, unless each call is relayed apart), and a line."""
    warnings.warn("the same line every time", UserWarning, stacklevel=1)
    print(f"item says {x}")
    return x


class Point:
    """A user's class: its instances and its methods travel."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def norm2(self) -> int:
        """x² + y²."""
        return self.x * self.x + self.y * self.y


def draw(_: object) -> tuple[float, float, float]:
    """One draw from each random source a seed governs: ``cloudburst.rng()``, ``random`` and numpy's global."""
    import numpy as np  # an optional dependency: only the seed cases call this, and they skip without it

    return (cloudburst.rng().random(), random.random(), float(np.random.random()))


def rng_draws(_: object) -> list[float]:
    """Three draws from the item's own generator."""
    return list(cloudburst.rng().random(3).tolist())


def pid(_: object = None) -> int:
    """The process id of whoever runs it."""
    return os.getpid()


#: set in the client by the suite (``contract`` imports it); a worker imports this module afresh
IN_CLIENT = False


def mark_client() -> None:
    """Say that this process is the client's (the suite does, as it is imported); a worker's never is."""
    global IN_CLIENT
    IN_CLIENT = True


def explode_elsewhere() -> object:
    """Fails to load in any process but the client's."""
    if not IN_CLIENT:
        raise ImportError("module 'only_on_the_client' is not installed on this worker")
    return "fine"


def explode_here() -> object:
    """Fails to load in the client's process."""
    if IN_CLIENT:
        raise ImportError("module 'only_on_the_worker' is not installed on the client")
    return "fine"


class WorkerHostile:
    """Pickles fine; fails to unpickle on a worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (explode_elsewhere, ())


class ClientHostile:
    """Pickles fine on a worker; fails to unpickle in the client."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (explode_here, ())


def identity(x: Any) -> Any:
    """``x``."""
    return x


def lock_on_bad(x: int) -> Any:
    """A result that cannot be pickled for the bad item."""
    return threading.Lock() if x == BAD else x


def client_hostile_on_bad(x: int) -> Any:
    """A result the client cannot unpickle for the bad item."""
    return ClientHostile() if x == BAD else x


def exit_on_bad(x: int) -> int:
    """sys.exit(4) for the bad item."""
    if x == BAD:
        sys.exit(4)
    return x


def interrupt_on_bad(x: int) -> int:
    """KeyboardInterrupt for the bad item."""
    if x == BAD:
        raise KeyboardInterrupt
    return x


def sigkill_on_bad(x: int) -> int:
    """The worker kills itself for the bad item."""
    if x == BAD:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def os_exit_on_bad(x: int) -> int:
    """os._exit(3) for the bad item."""
    if x == BAD:
        os._exit(3)
    return x


def segfault_on_bad(x: int) -> int:
    """A segmentation fault for the bad item."""
    if x == BAD:
        ctypes.string_at(0)
    return x


def die_first_time(x: int, marker: str) -> int:
    """x × 10; the bad item kills its worker the first time it runs (the marker file remembers)."""
    path = Path(marker)
    if x == BAD and not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10
