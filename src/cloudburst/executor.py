"""The public face: ``Executor`` (a concurrent.futures.Executor) and ``map``."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import Executor as _StdExecutor
from types import TracebackType
from typing import Any, Literal, TypeVar

from .backends import get_backend
from .config.options import ExecutorOptions, check_known
from .core.progress import Progress, wanted
from .core.session import Job
from .core.work import MapRun
from .detached import SUBMIT_BACKEND, leave, policy_for, runs_detached
from .errors import ConfigurationError
from .protocol.task import Columns
from .warm import check_keep_warm, make_key, run_map

__all__ = ["Executor", "map", "submit_job"]

T = TypeVar("T")

_CORE_PARAMETERS = frozenset(
    {"workers", "max_workers", "backend", "cpu", "memory", "retries", "seed", "progress", "idle_timeout", "env"}
)


class Executor(_StdExecutor):
    """Runs calls on worker processes (``backend="local"``) or in the cloud; a drop-in for ProcessPoolExecutor.

    Parameters
    ----------
    workers:
        How many workers (default: one per CPU here). ``max_workers`` is an alias.
    backend:
        ``"local"`` (the default) or a cloud backend name.
    cpu, memory:
        Resources per worker: ``cpu=1`` (the default), ``memory="2GB"`` (also ``"2 GiB"``, ``"512MB"``).
    retries:
        How many times a task whose worker died is run again before its future fails.
    seed:
        Gives every item its own reproducible random stream (see :func:`cloudburst.rng`).
    progress:
        ``True``/``False``/``"auto"``: a progress bar over submitted items.
    idle_timeout:
        Seconds after which an idle worker retires (None: never, for ``local``).
    env:
        Extra environment variables for the workers.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        backend: str = "local",
        cpu: float | None = None,
        memory: str | float | None = None,
        retries: int = 2,
        seed: int | None = None,
        progress: bool | Literal["auto"] = False,
        idle_timeout: float | None = None,
        env: dict[str, str] | None = None,
        max_workers: int | None = None,
        **backend_options: Any,
    ) -> None:
        backend_cls = get_backend(backend) if isinstance(backend, str) else None
        valid = _CORE_PARAMETERS | (backend_cls.option_names if backend_cls else frozenset())
        check_known(backend_options, valid, what=f"Executor(backend={backend!r})")
        _check_max_workers(max_workers)
        if workers is not None and max_workers is not None and workers != max_workers:
            raise ConfigurationError(f"workers={workers} and max_workers={max_workers} disagree; pass only one")
        defaults = backend_cls.defaults() if backend_cls else {}
        workers = workers if workers is not None else max_workers
        options = ExecutorOptions.from_user(
            workers=workers if workers is not None else defaults.get("workers"),
            backend=backend,
            cpu=cpu if cpu is not None else defaults.get("cpu", 1),
            memory=memory if memory is not None else defaults.get("memory"),
            retries=retries,
            seed=seed,
            progress=progress,
            idle_timeout=idle_timeout if idle_timeout is not None else defaults.get("idle_timeout"),
            env=env,
            backend_options=backend_options,
        )
        self.options = options
        self._job = Job(options, policy_for)
        job = self._job  # not self: the finalizer below holds the progress bar, which must not hold us
        bills = job.backend.hourly_cost(1) > 0
        self._progress = Progress(
            0, enabled=wanted(options.progress), postfix=(lambda: f"${job.cost():.2f}") if bills else None
        )
        self._job.on_items_done = self._progress.advance
        self._shutdown = False
        self._finalizer = weakref.finalize(self, _finalize, self._job, self._progress)

    @property
    def job_id(self) -> str:
        """This executor's job: its name in the store, the queues and ``cloudburst logs``/``status``."""
        return self._job.id

    @property
    def cost(self) -> float:
        """USD this executor's workers have cost so far (Fargate's billing rule; 0 on this machine)."""
        return self._job.cost()

    @property
    def bytes_uploaded(self) -> int:
        """Bytes this executor has written for its workers so far: functions, arguments and shared data, as
        stored (after compression). An object passed to many calls counts once, as it is stored once."""
        return self._job.packer.bytes_serialized

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns a :class:`concurrent.futures.Future`."""
        future = self._job.submit(fn, args, kwargs)
        self._progress.grow(1)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """Like :meth:`concurrent.futures.Executor.map`; ``chunksize=None`` sizes chunks automatically.

        Results come back in input order; an item's exception is raised when the
        iteration reaches it.
        """
        run = self.start_map(fn, *iterables, chunksize=chunksize)
        end = None if timeout is None else time.monotonic() + timeout
        return _iterate(run, end)

    def start_map(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int | None = None) -> MapRun:
        """Start a map and return its run (used by :func:`cloudburst.map`)."""
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ConfigurationError(f"chunksize={chunksize!r} must be a whole number ≥ 1, or None for automatic")
        if not iterables:
            raise TypeError("map() needs at least one iterable of arguments")
        columns = [it if isinstance(it, range) else list(it) for it in iterables]
        shortest = min(len(col) for col in columns)  # stops at the shortest, like the builtin
        calls = Columns(tuple(col if len(col) == shortest else col[:shortest] for col in columns))
        run = self._job.map(fn, calls, chunksize)
        self._progress.grow(len(calls))
        run.on_progress = self._progress.advance
        return run

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``cancel_futures`` cancel what has not started. Idempotent."""
        self._job.stop_accepting()
        if runs_detached(self._job) and not cancel_futures and not self._shutdown:
            leave(self._job)
            self._close()
            return
        if cancel_futures:
            self._job.cancel_pending()
        if wait:
            self._job.wait_idle()
            self._close()
        elif not self._job.busy():
            self._close()
        else:
            threading.Thread(target=self._close_when_idle, name="cloudburst-closer", daemon=True).start()

    def _close_when_idle(self) -> None:
        self._job.wait_idle()
        self._close()

    def _close(self) -> None:
        self._shutdown = True
        self._finalizer()

    def terminate(self) -> None:
        """Stop now: cancel everything, stop workers, delete the job's data."""
        self._job.stop_accepting()
        self._job.cancel_pending()
        self._close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            self.shutdown(wait=True)
        elif issubclass(exc_type, Exception):
            self.shutdown(wait=True, cancel_futures=True)
        else:  # KeyboardInterrupt, SystemExit: stop at once
            self.terminate()
        return False


def _check_max_workers(max_workers: object) -> None:
    """Refuse ``max_workers`` ≤ 0 in the words of concurrent.futures' own executors, which code may match."""
    if isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers <= 0:
        raise ConfigurationError(
            f"max_workers must be greater than 0 (got max_workers={max_workers}); "
            "pass e.g. max_workers=8, or None for one per CPU"
        )


def _finalize(job: Job, progress: Progress) -> None:
    progress.close()
    job.close()


def _iterate(run: MapRun, end: float | None) -> Iterator[Any]:
    position = 0
    try:
        while position < len(run):
            with run.cond:
                while run.ready_upto <= position and not run.cancelled:
                    remaining = None if end is None else end - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"map: {len(run) - position} result(s) not ready within the timeout")
                    run.cond.wait(remaining if remaining is not None else 0.5)
                if run.cancelled and run.ready_upto <= position:
                    raise CancelledError(f"map: item {run.base_index + position} was cancelled")
                upto = run.ready_upto
            for pos in range(position, upto):
                error = run.errors.get(pos)
                if error is not None:
                    raise error
                # Taken out of its slot before it is yielded, and never bound to a local of this frame:
                # while the caller's loop body runs, the caller holds the only reference.
                yield _take(run.values, pos)
            position = upto
    finally:
        if position < len(run):
            run.cancel()


def _gather(run: MapRun, end: float | None) -> list[Any]:
    """Every result of ``run`` as one list, as ``list(_iterate(run, end))`` gives it, without a step per item.

    Waits until every slot is filled, or until the first slot holding an error is reached (raised, and the
    rest cancelled). The list is handed over: the run keeps no reference to it.
    """
    with run.cond:
        while run.ready_upto < len(run):
            failed = min((pos for pos in run.errors if pos < run.ready_upto), default=None)
            if failed is not None:
                break
            if run.cancelled:
                raise CancelledError(f"map: item {run.base_index + run.ready_upto} was cancelled")
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                run.cancel()
                raise TimeoutError(f"map: {len(run) - run.ready_upto} result(s) not ready within the timeout")
            run.cond.wait(remaining if remaining is not None else 0.5)
        first_error = min(run.errors, default=None)
        values, run.values = run.values, []
    if first_error is not None:
        run.cancel()
        raise run.errors[first_error]
    return values


def _take(values: list[Any], pos: int) -> Any:
    """``values[pos]``, leaving ``None`` in its place."""
    value, values[pos] = values[pos], None
    return value


_ERROR_MODES = ("raise", "return", "skip")


def map(
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    workers: int | None = None,
    backend: str = "local",
    seed: int | None = None,
    errors: Literal["raise", "return", "skip"] = "raise",
    progress: bool | Literal["auto"] = "auto",
    chunksize: int | None = None,
    keep_warm: float | None = None,
    **resources: Any,
) -> list[Any]:
    """Run ``fn`` over the items and return the results as a list, in input order.

    ``errors="raise"`` stops at the first failure and raises it; ``"return"`` puts
    each failed item's exception in its place; ``"skip"`` leaves failed items out.
    ``resources`` are passed to :class:`Executor` (``cpu``, ``memory``, ``retries``...).
    The workers are kept ``keep_warm`` seconds (default 300; 0: stopped on return) for the
    next call with the same settings (see :mod:`cloudburst.warm`).
    """
    if errors not in _ERROR_MODES:
        raise ConfigurationError(f"errors={errors!r} must be one of 'raise', 'return' or 'skip'")
    if progress not in (True, False, "auto"):
        raise ConfigurationError(f"progress={progress!r} must be True, False or 'auto'")
    idle_seconds = check_keep_warm(keep_warm)
    settings = {"workers": workers, "backend": backend, "seed": seed, **resources}
    return run_map(
        lambda: Executor(workers, backend=backend, seed=seed, progress=False, **resources),
        make_key(settings),
        fn,
        iterables,
        errors=errors,
        progress=progress,
        chunksize=chunksize,
        keep_warm=idle_seconds,
    )


def submit_job(fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int | None = None, **options: Any) -> str:
    """Queue ``fn`` over the items on a cloud backend and return the job id, without waiting.

    ``options`` are those of :class:`cloudburst.Executor` (``backend`` defaults to the cloud backend,
    ``detached.SUBMIT_BACKEND``); the job runs detached (see :mod:`cloudburst.detached`): collect its
    results with :func:`cloudburst.attach`.
    """
    options.setdefault("backend", SUBMIT_BACKEND)
    options["detached"] = True
    with Executor(**options) as executor:
        executor.start_map(fn, *iterables, chunksize=chunksize)
    return executor.job_id
