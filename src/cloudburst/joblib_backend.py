"""joblib's ``n_jobs`` on cloudburst: the ``"cloudburst"`` backend of ``joblib.parallel_config``.

::

    with joblib.parallel_config(backend="cloudburst", n_jobs=-1, cloudburst_backend="fargate", cpu=2):
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

``cloudburst_backend`` picks cloudburst's own backend (``"local"``, ``"fargate"``...), since joblib's
``backend`` names this one; every other keyword is an option of :class:`cloudburst.Executor`, and
``executor=`` runs on an executor the caller owns (never shut here). Without it, the workers a ``Parallel``
call started are kept ``keep_warm`` seconds (300 by default, as loky keeps its own; 0 stops them when the
call ends) for the next call with the same settings, on the pool :func:`cloudburst.map` uses: a grid search's
second ``Parallel`` call (the refit) finds them running, with scikit-learn already imported.
Each joblib batch becomes one cloudburst call whose arguments are the batch's own arguments lifted to
the top, so a large argument every call shares (scikit-learn's ``X`` and ``y``) is stored once per job.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, ThreadingBackend

from .backends import get_backend
from .config.options import default_workers
from .errors import ConfigurationError
from .executor import Executor
from .warm import Warm, check_keep_warm, give_back, make_key, take

__all__ = ["NAME", "CloudburstBackend", "register"]

NAME = "cloudburst"

#: (callable index, argument indices, (keyword, index) pairs) per call of a batch
_Plan = tuple[tuple[int, tuple[int, ...], tuple[tuple[str, int], ...]], ...]


class CloudburstBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """A joblib parallel backend that runs each batch of calls as one call on a :class:`cloudburst.Executor`."""

    supports_retrieve_callback = True
    supports_timeout = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        cloudburst_backend: str = "local",
        executor: Executor | None = None,
        keep_warm: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if "backend" in options:
            raise ConfigurationError(
                "pass cloudburst's backend as cloudburst_backend=..., e.g. "
                'joblib.parallel_config(backend="cloudburst", cloudburst_backend="fargate"): '
                "joblib's own backend= names the joblib backend"
            )
        if executor is not None and (options or cloudburst_backend != "local"):
            raise ConfigurationError("pass either executor= or cloudburst's options, not both")
        self._backend_name = executor.options.backend if executor is not None else cloudburst_backend
        self._latency = get_backend(self._backend_name).target_task_seconds
        self._options = options
        self._given = executor
        self._executor = executor
        self._keep_warm = check_keep_warm(keep_warm)
        self._warm: Warm | None = None  # the executor this backend took from the warm pool, if any
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()

    # -- sizing
    def _all_workers(self) -> int:
        """How many workers the backend gives: the executor's, the configured ``workers``, or its default."""
        if self._given is not None:
            return self._given.options.workers
        workers = self._options.get("workers", self._options.get("max_workers"))
        if workers is None:
            workers = get_backend(self._backend_name).defaults().get("workers")
        return workers if isinstance(workers, int) else default_workers()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs`` as joblib means it: -1 is every worker the backend gives, -2 all but one, and so on."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(self._all_workers() + 1 + n_jobs, 1)
        return int(n_jobs) if self._given is None else min(int(n_jobs), self._given.options.workers)

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None, **_: Any
    ) -> int:
        """Start (or keep) the executor for a ``Parallel`` call; the number of workers it runs."""
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        # Batches sized to the backend's latency: about a second or more on a cloud queue.
        self.MIN_IDEAL_BATCH_DURATION = max(self._latency, 0.2)
        self.MAX_IDEAL_BATCH_DURATION = max(2.0, 10 * self._latency)
        if self._given is None and (self._executor is None or self._executor.options.workers != n):
            self._close_owned(cancel=False)
            options = {"backend": self._backend_name, **self._with_thread_limits(self._options)}
            key = make_key({"front end": NAME, "workers": n, **options})
            self._warm = take(key, lambda: Executor(n, **options))
            self._executor = self._warm.executor
        return n

    def _with_thread_limits(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options, with BLAS/OpenMP threads in each worker limited to its ``cpu`` (the user's env wins)."""
        threads = self.inner_max_num_threads or max(1, int(options.get("cpu") or 1))
        env = {var: str(threads) for var in self.MAX_NUM_THREADS_VARS}
        rest = {k: v for k, v in options.items() if k not in ("workers", "max_workers")}  # n_jobs decides
        return {**rest, "env": {**env, **(options.get("env") or {})}}

    # -- running
    @property
    def executor(self) -> Executor:
        """The executor running this backend's batches (started by ``configure``)."""
        if self._executor is None:
            raise ConfigurationError("the cloudburst joblib backend runs nothing before joblib configures it")
        return self._executor

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None) -> Future[Any]:
        """Run one joblib batch as one cloudburst call; ``callback`` gets its future when it is done."""
        plan, values = _lift(func)
        if self._warm is not None:
            for f, _, _ in plan:
                self._warm.stamp(values[f])  # an edited module then starts fresh workers next time
        # A batch's data (``X``, ``y``, fold indices) comes again in the next batches: stored once, from the first.
        self.executor._job.packer.expect_repeats(values)
        threads = max(1, int(self.executor.options.cpu))
        future = self.executor.submit(_run_batch, plan, ((self.nesting_level or 0) + 1, threads), *values)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit  # joblib < 1.5 calls this name

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's results (raising its exception)."""
        return out.result()

    def retrieve_result(self, out: Future[Any], timeout: float | None = None) -> Any:
        """The batch's results, waiting at most ``timeout`` seconds."""
        return out.result(timeout)

    # -- ending
    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: cancel what is in flight; an executor this backend started stops with its workers."""
        with self._lock:
            futures, self._futures = self._futures, set()
        for future in futures:
            future.cancel()
        self._close_owned(cancel=True)
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        """The ``Parallel`` call ended: the workers it used are kept warm, or stopped if work is still in
        flight (a generator closed early); an executor passed in stays as it is."""
        with self._lock:
            busy = bool(self._futures)
        self._close_owned(cancel=busy)

    def _close_owned(self, *, cancel: bool) -> None:
        executor, warm = self._executor, self._warm
        if self._given is None and executor is not None:
            self._executor = self._warm = None
            if cancel or warm is None:
                executor.terminate()
            else:
                give_back(warm, self._keep_warm)

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Nested ``Parallel`` calls run in the worker, on threads (see :func:`_run_batch`)."""
        return ThreadingBackend(nesting_level=(self.nesting_level or 0) + 1), None

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """Nothing to do: a worker never waits on a batch of the same job."""
        yield


def _lift(func: Callable[[], Any]) -> tuple[_Plan, list[Any]]:
    """A joblib batch as a plan over its distinct objects (callables, arguments), each listed once.

    Sent as top-level arguments, a large object the batches share is found and stored once per job by
    cloudburst's packer, where inside the batch object it would be pickled again with each batch.
    """
    items = getattr(func, "items", None)
    if items is None:  # not a BatchedCalls: one call of ``func()``
        items = [(func, (), {})]
    values: list[Any] = []
    index: dict[int, int] = {}

    def slot(obj: Any) -> int:
        position = index.get(id(obj))
        if position is None:
            position = index[id(obj)] = len(values)
            values.append(obj)
        return position

    plan = tuple(
        (slot(f), tuple(slot(a) for a in args), tuple((k, slot(v)) for k, v in kwargs.items()))
        for f, args, kwargs in items
    )
    return plan, values


def _run_batch(plan: _Plan, nested: tuple[int, int], *values: Any) -> list[Any]:
    """In the worker: run a batch's calls, nested ``Parallel`` calls on at most the worker's ``cpu`` threads."""
    level, threads = nested
    with joblib.parallel_config(backend=ThreadingBackend(nesting_level=level), n_jobs=threads):
        return [values[f](*(values[a] for a in args), **{k: values[v] for k, v in kwargs}) for f, args, kwargs in plan]


def register() -> None:
    """Register the ``"cloudburst"`` joblib backend (done by ``import cloudburst`` once joblib is imported)."""
    joblib.register_parallel_backend(NAME, CloudburstBackend)


if "cloudburst.joblib_hook" in sys.modules:  # imported before joblib was: its hook deferred to us
    register()
