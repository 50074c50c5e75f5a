"""Warm reuse for :func:`cloudburst.map` (and joblib's backend): consecutive calls with the same settings run on
the same workers.

::

    cb.map(...) ──► checkout(key) ── the idle executor has this key ──► reuse it (warm: no start-up)
                        │ otherwise: close the idle one, make a new one
                        ▼
                    start_map ─► wait (a progress bar of its own) ─► checkin: kept idle for keep_warm
                                                                    seconds, then shut down

As loky's ``get_reusable_executor`` does, at most one executor is kept idle: each holds workers (CPUs
here, money on a cloud backend), so a call with other settings closes it rather than keep two. Maps that
run at the same time (from several threads) each take their own executor out; when they finish, the last
one back is kept. An executor that broke, or a map that ended in cloudburst's own error, a Ctrl-C or an
unfinished ``errors="raise"``, is never kept.

The key is everything that changes the workers: the call's settings (backend, workers, resources,
backend options, seed, retries), the client's environment variables (local workers inherit them, and
settings come from ``CLOUDBURST_*`` variables) and the settings file. The files defining the mapped
functions are stamped too: a warm worker keeps the modules it imported, so an edited one starts fresh
workers.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .config.userconfig import config_path
from .core.progress import Progress, wanted
from .core.work import MapRun
from .errors import BrokenExecutorError, CloudburstError, ConfigurationError, CostLimitExceeded, ExecutorShutdownError

if TYPE_CHECKING:
    from .executor import Executor

__all__ = ["KEEP_WARM_SECONDS", "give_back", "idle_executor", "run_map", "shutdown", "take"]

#: How long an idle executor's workers are kept for the next ``map`` (loky keeps its workers 300 s).
#: Local workers cost only memory. Cloud workers also stop on their own after ``idle_timeout``
#: (120 s on Fargate), which bounds what idle time costs there.
KEEP_WARM_SECONDS = 300.0

ErrorMode = Literal["raise", "return", "skip"]


@dataclass(eq=False)
class Warm:
    """An executor taken out for one map, or kept idle between maps."""

    executor: Executor
    key: tuple[Any, ...]
    sources: dict[str, int] = field(default_factory=dict)  # files of the mapped functions -> mtime_ns
    timer: threading.Timer | None = None

    def stamp(self, fn: Callable[..., Any]) -> None:
        path = _source_file(fn)
        if path is not None and path not in self.sources:
            self.sources[path] = _mtime(path)

    def unchanged(self) -> bool:
        return all(_mtime(path) == mtime for path, mtime in self.sources.items())


class _Pool:
    """At most one idle executor, closed when its idle time runs out. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: Warm | None = None

    def checkout(self, key: tuple[Any, ...]) -> Warm | None:
        """The idle executor if it was made with ``key`` and its code is unchanged; None otherwise (then
        the idle one is closed: a new one with other settings replaces it)."""
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is None:
            return None
        if idle.timer is not None:
            idle.timer.cancel()
        if idle.key == key and idle.unchanged():
            return idle
        idle.executor.shutdown(wait=True)
        return None

    def checkin(self, warm: Warm, keep_warm: float) -> None:
        """Keep ``warm`` idle for ``keep_warm`` seconds (closing the one kept before), or close it now."""
        if keep_warm <= 0:
            warm.executor.shutdown(wait=True)
            return
        # A daemon timer: an idle executor never holds up the interpreter's exit (atexit closes it).
        warm.timer = threading.Timer(keep_warm, self._expire, args=(warm,))
        warm.timer.name = "cloudburst-keep-warm"
        warm.timer.daemon = True
        with self._lock:
            old, self._idle = self._idle, warm
        warm.timer.start()
        if old is not None:
            if old.timer is not None:
                old.timer.cancel()
            old.executor.shutdown(wait=True)

    def _expire(self, warm: Warm) -> None:
        with self._lock:
            if self._idle is not warm:
                return  # taken out for a map meanwhile, or replaced
            self._idle = None
        warm.executor.shutdown(wait=True)

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None:
            if idle.timer is not None:
                idle.timer.cancel()
            idle.executor.shutdown(wait=True)

    def idle_executor(self) -> Executor | None:
        with self._lock:
            return None if self._idle is None else self._idle.executor

    def forget(self) -> None:
        """In a forked child: the idle executor's workers and threads belong to the parent."""
        self._lock = threading.Lock()
        self._idle = None


_POOL = _Pool()


def shutdown() -> None:
    """Stop the idle workers that :func:`cloudburst.map` keeps for its next call, now."""
    _POOL.shutdown()


def idle_executor() -> Executor | None:
    """The executor :func:`cloudburst.map` keeps idle for its next call, if any (for tests and tools)."""
    return _POOL.idle_executor()


atexit.register(_POOL.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)


def take(key: tuple[Any, ...], make_executor: Callable[[], Executor]) -> Warm:
    """The idle executor made with ``key`` (its workers started, their imports done), or a new one: for a
    front end other than ``map`` (joblib's backend) that runs on the same warm workers. Hand it back with
    :func:`give_back`, or shut its executor down."""
    warm = _POOL.checkout(key)
    return warm if warm is not None else Warm(make_executor(), key)


def give_back(warm: Warm, keep_warm: float) -> None:
    """Keep ``warm``'s executor idle for ``keep_warm`` seconds for the next call with its key (0: close it)."""
    _POOL.checkin(warm, keep_warm)


def make_key(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """What decides whether an idle executor can run a map: the call's settings, the environment
    variables (local workers inherit them; settings come from ``CLOUDBURST_*``) and the settings file."""
    path = config_path()
    try:
        stat = path.stat()
        config = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        config = (str(path), 0, -1)
    return (sorted(settings.items(), key=lambda kv: kv[0]), dict(os.environ), config)


def check_keep_warm(keep_warm: object) -> float:
    """``keep_warm`` as seconds; None means :data:`KEEP_WARM_SECONDS`."""
    if keep_warm is None:
        return KEEP_WARM_SECONDS
    if isinstance(keep_warm, bool) or not isinstance(keep_warm, (int, float)) or not 0 <= keep_warm < math.inf:
        raise ConfigurationError(
            f"keep_warm={keep_warm!r} must be a finite number of seconds ≥ 0 (how long idle workers are kept for the "
            f"next map; 0 stops them when the map returns), or None for {KEEP_WARM_SECONDS:g}"
        )
    return float(keep_warm)


def run_map(
    make_executor: Callable[[], Executor],
    key: tuple[Any, ...],
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    errors: ErrorMode,
    progress: bool | Literal["auto"],
    chunksize: int | None,
    keep_warm: float,
) -> list[Any]:
    """Run one ``cloudburst.map`` on a warm executor (or a new one) and return its results."""
    warm, run = _start(make_executor, key, fn, iterables, chunksize, keep_warm)
    try:
        _wait_with_progress(run, warm.executor, progress, stop_on_error=errors == "raise")
    except BaseException as stopped:
        # As leaving a `with Executor` block would: Ctrl-C terminates at once, an error cancels what waits.
        warm.executor.__exit__(type(stopped), stopped, stopped.__traceback__)
        raise
    broke = any(isinstance(e, CloudburstError) for e in run.errors.values())
    if errors == "raise" and run.errors:
        first = min(run.errors)
        exc = run.errors[first]
        if isinstance(exc, CostLimitExceeded):
            exc.results = run.finished_values()
        if hasattr(exc, "add_note"):
            exc.add_note(
                f"cloudburst.map: item {first} failed; {run.done - len(run.errors)} of {len(run)} items had "
                "finished. Pass errors='return' to keep every result and exception."
            )
        if broke or run.done < len(run):  # its workers still run the rest: stop them rather than wait
            warm.executor.shutdown(wait=False, cancel_futures=True)
        else:
            _POOL.checkin(warm, keep_warm)
        raise exc
    if broke:
        warm.executor.shutdown(wait=True)
    else:
        _POOL.checkin(warm, keep_warm)
    if errors == "return":
        return [run.errors.get(i, value) for i, value in enumerate(run.values)]
    if errors == "skip":
        return [value for i, value in enumerate(run.values) if i not in run.errors]
    return run.values


def _start(
    make_executor: Callable[[], Executor],
    key: tuple[Any, ...],
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    chunksize: int | None,
    keep_warm: float,
) -> tuple[Warm, MapRun]:
    """Take the idle executor out (or make one) and start the map on it."""
    warm = _POOL.checkout(key)
    if warm is not None:
        try:
            run = warm.executor.start_map(fn, *iterables, chunksize=chunksize)
            warm.stamp(fn)
            return warm, run
        except (BrokenExecutorError, ExecutorShutdownError):
            warm.executor.shutdown(wait=True)  # it broke while idle (its cloud went away): start afresh
        except BaseException:
            _POOL.checkin(warm, keep_warm)  # the call was wrong, not the executor
            raise
    warm = Warm(make_executor(), key)
    try:
        run = warm.executor.start_map(fn, *iterables, chunksize=chunksize)
    except BaseException:
        warm.executor.shutdown(wait=True)
        raise
    warm.stamp(fn)
    return warm, run


def _wait_with_progress(
    run: MapRun, executor: Executor, progress: bool | Literal["auto"], *, stop_on_error: bool
) -> None:
    """Wait for the map's results (or its first error), with a progress bar of this map alone."""
    bar = _MapBar(run, executor, wanted(progress))
    try:
        with run.cond:
            while run.done < len(run) and not run.cancelled and not (stop_on_error and run.errors):
                run.cond.wait(0.5)
            if run.cancelled and run.done < len(run):
                raise CancelledError("map was cancelled before it finished")
    finally:
        bar.close()


class _MapBar:
    """A progress bar counting one map's items (the executor may have run others), with what the map
    has cost so far where workers are billed."""

    def __init__(self, run: MapRun, executor: Executor, enabled: bool) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._shown = 0
        cost_before = executor.cost
        self._bar = Progress(len(run), enabled=enabled, postfix=lambda: _cost_note(executor.cost - cost_before))
        # Counted from run.done, never from the increments: fills that came in before the bar was attached
        # are then counted once, and no fill twice.
        run.on_progress = self._update
        self._update(0)

    def _update(self, _count: int) -> None:
        with self._lock:
            done = self._run.done
            if done > self._shown:
                self._bar.advance(done - self._shown)
                self._shown = done

    def close(self) -> None:
        self._update(0)
        self._bar.close()


def _cost_note(dollars: float) -> str:
    return f"${dollars:.2f}" if dollars > 0 else ""


def _source_file(fn: Callable[..., Any]) -> str | None:
    """The file of the module that defines ``fn``, when it is a file a worker may import."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) and path.endswith(".py") else None


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1
