"""``cloudburst.Pool``: a drop-in for :class:`multiprocessing.pool.Pool` on cloudburst's workers.

Where it differs from the standard library: a worker that dies is replaced and its task retried
(``retries=``, see :class:`cloudburst.Executor`) instead of the pool hanging; ``imap`` and
``imap_unordered`` read their input lazily and return plain generators; ``maxtasksperchild`` is
accepted and advisory (workers are not recycled after a number of tasks).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Generic, TypeVar

from .executor import Executor, _gather
from .streaming import imap as _imap

__all__ = ["AsyncResult", "Pool"]

T = TypeVar("T")

_initialized: set[str] = set()  # in a worker process: the tokens of the pools whose initializer ran here
_init_lock = threading.Lock()


class _Initialized:
    """``fn`` behind a pool's initializer, which runs the first time a worker process sees this pool's token.

    A replaced worker is a new process with an empty ``_initialized``, so it runs the initializer again."""

    def __init__(self, fn: Callable[..., Any], token: str, initializer: Callable[..., Any], initargs: tuple[Any, ...]):
        self.fn, self.token, self.initializer, self.initargs = fn, token, initializer, initargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _init_lock:
            if self.token not in _initialized:
                self.initializer(*self.initargs)
                _initialized.add(self.token)
        return self.fn(*args, **kwargs)


def _star(fn: Callable[..., T], args: Iterable[Any]) -> T:
    return fn(*args)


def _sized(chunksize: int) -> int | None:
    """multiprocessing's default ``chunksize=1`` means "no preference": cloudburst then sizes chunks itself."""
    return None if chunksize == 1 else chunksize


class AsyncResult(Generic[T]):
    """The result of :meth:`Pool.apply_async` and friends, as :class:`multiprocessing.pool.AsyncResult`."""

    def __init__(
        self,
        future: Future[T],
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._future = future
        self._event = threading.Event()
        self._callback, self._error_callback = callback, error_callback
        future.add_done_callback(self._done)

    def _done(self, future: Future[T]) -> None:
        # Callbacks run before the result is ready, as in multiprocessing: get() returns after them.
        try:
            error = future.exception()
            if error is None and self._callback is not None:
                self._callback(future.result())
            elif error is not None and self._error_callback is not None:
                self._error_callback(error)
        finally:
            self._event.set()

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError when it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not self._future.cancelled() and self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """The result; re-raises the call's exception; multiprocessing.TimeoutError after ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError(f"result not ready within {timeout} s")
        return self._future.result()


class Pool:
    """A process pool with :class:`multiprocessing.pool.Pool`'s API, on cloudburst's workers.

    ``processes`` is the number of workers (default: one per CPU locally, the backend's default in the
    cloud); ``initializer(*initargs)`` runs once in each worker process before its first task of this
    pool; ``maxtasksperchild`` is accepted but advisory. ``options`` go to :class:`cloudburst.Executor`
    (``backend=``, ``cpu=``, ``memory=``, ``retries=``, ...). Leaving a ``with`` block terminates the
    pool, as in multiprocessing; call :meth:`close` and :meth:`join` to wait for outstanding work.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        **options: Any,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if processes is None and options.get("backend", "local") == "local":
            processes = os.cpu_count() or 1
        self._processes = processes
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._token = uuid.uuid4().hex
        self._executor = Executor(processes, **options)
        self._state = "RUN"
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} pool_size={self._processes}>"

    # ------------------------------------------------------------------ helpers
    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        if self._initializer is None:
            return fn
        return _Initialized(fn, self._token, self._initializer, self._initargs)

    def _in_background(self, results: Callable[[], list[T]]) -> Future[list[T]]:
        """A future of ``results()``, waited for on a thread (the work is already submitted)."""
        future: Future[list[T]] = Future()

        def gather() -> None:
            try:
                future.set_result(results())
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(target=gather, name="cloudburst-pool-map", daemon=True)
        self._threads.append(thread)
        thread.start()
        return future

    # ------------------------------------------------------------------ blocking calls
    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> T:
        """``func(*args, **kwds)`` on a worker; blocks until it returns."""
        return self.apply_async(func, args, kwds).get()

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None) -> list[T]:
        """``[func(x) for x in iterable]`` on the workers, in order; raises the first item's exception."""
        self._check_running()
        return _gather(self._executor.start_map(self._wrap(func), iterable, chunksize=chunksize), None)

    def starmap(
        self, func: Callable[..., T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[T]:
        """``[func(*args) for args in iterable]`` on the workers, in order."""
        return self.map(functools.partial(_star, func), iterable, chunksize)

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1) -> Iterator[T]:
        """Results of ``func`` over ``iterable`` in order, streamed; the input is read lazily."""
        self._check_running()
        return _imap(self._wrap(func), iterable, chunksize=_sized(chunksize), executor=self._executor)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1) -> Iterator[T]:
        """Like :meth:`imap`, but results come as they finish."""
        self._check_running()
        return _imap(self._wrap(func), iterable, ordered=False, chunksize=_sized(chunksize), executor=self._executor)

    # ------------------------------------------------------------------ asynchronous calls
    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Start ``func(*args, **kwds)``; an :class:`AsyncResult`. Callbacks run on a result thread."""
        self._check_running()
        future = self._executor.submit(self._wrap(func), *args, **(kwds or {}))
        return AsyncResult(future, callback, error_callback)

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """Start :meth:`map`; an :class:`AsyncResult` of the list of results."""
        self._check_running()
        run = self._executor.start_map(self._wrap(func), iterable, chunksize=chunksize)
        return AsyncResult(self._in_background(lambda: _gather(run, None)), callback, error_callback)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """Start :meth:`starmap`; an :class:`AsyncResult` of the list of results."""
        return self.map_async(functools.partial(_star, func), iterable, chunksize, callback, error_callback)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Accept no more work; the work already given runs to the end (see :meth:`join`)."""
        if self._state == "RUN":
            self._state = "CLOSE"

    def terminate(self) -> None:
        """Stop now: cancel outstanding work and stop the workers."""
        self._state = "TERMINATE"
        self._executor.terminate()

    def join(self) -> None:
        """Wait for the workers to finish; call :meth:`close` or :meth:`terminate` first."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._state == "CLOSE":
            self._executor.shutdown(wait=True)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.terminate()
