"""What the contract suite sends to workers: plain functions of an importable module without pytest."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def talk(x: int) -> int:
    """Prints to stdout and stderr."""
    print(f"hello from {x}")
    print(f"to stderr {x}", file=sys.stderr)
    return x


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


def die_first_time(x: int, marker: str) -> int:
    """x × 10; the bad item kills its worker the first time it runs (the marker file remembers)."""
    path = Path(marker)
    if x == BAD and not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10
