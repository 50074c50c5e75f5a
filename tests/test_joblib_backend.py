"""The "cloudburst" joblib backend: joblib's documented behaviours for custom backends, and scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import joblib
import numpy as np
import pytest

import cloudburst
from cloudburst.joblib_backend import CloudburstBackend
from cloudburst.joblib_hook import enable

from .conftest import leftover_check, process_gone, wait_until

enable()


@pytest.fixture(scope="module")
def shared() -> Iterator[cloudburst.Executor]:
    """One executor for the tests that need no fresh workers."""
    with cloudburst.Executor(2) as ex:
        yield ex


def square(x: int) -> int:
    return x * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"item {x}")
    return x


def slow_unless_first(x: int) -> int:
    if x == 0:
        raise ValueError("first fails")
    time.sleep(30)
    return x


def nested_sum(n: int) -> tuple[int, str | None, int]:
    inner = joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(n))
    return sum(inner), os.environ.get("OMP_NUM_THREADS"), os.getpid()


def test_importing_cloudburst_does_not_import_joblib_and_registers_it_once_imported() -> None:
    code = (
        "import sys, cloudburst\n"
        "from cloudburst.joblib_hook import enable; enable()\n"
        "assert 'joblib' not in sys.modules\n"
        "import joblib\n"
        "with joblib.parallel_config(backend='cloudburst', n_jobs=2):\n"
        "    print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(5)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 2, 3, 4]"


def test_results_come_back_in_order(shared: cloudburst.Executor) -> None:
    with joblib.parallel_config(backend="cloudburst", executor=shared):
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(200)) == [i * i for i in range(200)]


def test_legacy_parallel_backend_works(shared: cloudburst.Executor) -> None:
    with joblib.parallel_backend("cloudburst", executor=shared):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_exception_propagates_with_its_type(shared: cloudburst.Executor) -> None:
    with joblib.parallel_config(backend="cloudburst", executor=shared), pytest.raises(KeyError, match="item 7"):
        joblib.Parallel()(joblib.delayed(fail_on)(i, 7) for i in range(20))


UNORDERED = pytest.mark.skipif(
    tuple(int(part) for part in joblib.__version__.split(".")[:2]) < (1, 4),
    reason="return_as='generator_unordered' came with joblib 1.4",
)


@pytest.mark.parametrize("mode", ["generator", pytest.param("generator_unordered", marks=UNORDERED)])
def test_generator_modes_stream_results(shared: cloudburst.Executor, mode: str) -> None:
    with joblib.parallel_config(backend="cloudburst", executor=shared):
        results = joblib.Parallel(return_as=mode)(joblib.delayed(square)(i) for i in range(50))
        assert not isinstance(results, list)
        got = list(results)
    expected = [i * i for i in range(50)]
    assert (got if mode == "generator" else sorted(got)) == expected


@pytest.mark.parametrize(
    ("options", "n_jobs", "expected"),
    [
        ({}, -1, os.cpu_count()),
        ({"workers": 5}, -1, 5),
        ({"workers": 5}, -2, 4),
        ({"workers": 5}, 3, 3),
        ({}, None, os.cpu_count()),
    ],
)
def test_n_jobs_semantics(options: dict[str, int], n_jobs: int | None, expected: int) -> None:
    backend = CloudburstBackend(**options)
    assert backend.effective_n_jobs(n_jobs) == expected
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)


def test_a_backend_keyword_is_refused_with_the_right_name() -> None:
    with pytest.raises(cloudburst.ConfigurationError, match="cloudburst_backend"):
        CloudburstBackend(backend="fargate")


def test_abort_on_error_cancels_in_flight_and_leaves_no_workers() -> None:
    backend = CloudburstBackend(workers=2)
    checks = []

    def calls() -> Iterator[object]:
        for i in range(6):
            yield joblib.delayed(slow_unless_first)(i)
        checks.append(leftover_check(backend.executor))  # read while the batches are in flight

    started = time.monotonic()
    # Managed (a with block): joblib ends nothing itself, so abort_everything alone must stop the work.
    with joblib.Parallel(backend=backend, n_jobs=2, batch_size=1, pre_dispatch="all") as parallel:
        with pytest.raises(ValueError, match="first fails"):
            parallel(calls())
        assert time.monotonic() - started < 25, "the 30 s tasks in flight were waited for, not cancelled"
        assert checks, "the calls were never all dispatched"
        for check in checks:
            check()
        assert parallel(joblib.delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]  # ready again


def test_nested_parallel_runs_in_the_worker_with_threads_limited_to_its_cpu() -> None:
    with joblib.parallel_config(backend="cloudburst", n_jobs=2, cpu=1, keep_warm=0):  # 0: stopped at the end
        results = joblib.Parallel()(joblib.delayed(nested_sum)(n) for n in (10, 20))
    assert [total for total, _, _ in results] == [sum(i * i for i in range(n)) for n in (10, 20)]
    assert {threads for _, threads, _ in results} == {"1"}
    assert all(pid != os.getpid() for _, _, pid in results)
    assert all(wait_until(lambda p=pid: process_gone(p), timeout=30) for _, _, pid in results)


def pid_of(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


def test_workers_stay_warm_for_the_next_parallel_call_and_keep_warm_0_stops_them() -> None:
    with joblib.parallel_config(backend="cloudburst", n_jobs=2):
        first = set(joblib.Parallel()(joblib.delayed(pid_of)(i) for i in range(8)))
        second = set(joblib.Parallel()(joblib.delayed(pid_of)(i) for i in range(8)))
    assert first and second <= first, f"the second Parallel call started new workers: {first} then {second}"
    assert cloudburst.warm.idle_executor() is not None, "no executor was kept warm"
    assert all(not process_gone(pid) for pid in first), "the warm workers stopped"
    cloudburst.warm.shutdown()
    assert all(wait_until(lambda p=pid: process_gone(p), timeout=30) for pid in first)
    with joblib.parallel_config(backend="cloudburst", n_jobs=2, keep_warm=0):
        third = set(joblib.Parallel()(joblib.delayed(pid_of)(i) for i in range(8)))
    assert not third & first, "stopped workers ran the third call"
    assert cloudburst.warm.idle_executor() is None
    assert all(wait_until(lambda p=pid: process_gone(p), timeout=30) for pid in third)


def test_a_bad_keep_warm_is_refused() -> None:
    with pytest.raises(cloudburst.ConfigurationError, match="keep_warm"):
        CloudburstBackend(keep_warm=-1)


def _search(n_jobs: int) -> object:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=2000, n_features=200, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False], "tol": [1e-4, 1e-3]}
    search = GridSearchCV(LogisticRegression(max_iter=200), grid, cv=3, n_jobs=n_jobs)  # 16 x 3 = 48 fits
    return search.fit(X, y), X, y


def test_grid_search_matches_n_jobs_1_and_moves_x_and_y_once(shared: cloudburst.Executor) -> None:
    pytest.importorskip("sklearn")
    reference, _, _ = _search(1)
    before = shared.bytes_uploaded
    with joblib.parallel_config(backend="cloudburst", executor=shared):
        search, X, y = _search(-1)
    sent = shared.bytes_uploaded - before
    assert search.best_params_ == reference.best_params_  # type: ignore[attr-defined]
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_allclose(search.cv_results_[key], reference.cv_results_[key])  # type: ignore[attr-defined]
    data = X.nbytes + y.nbytes  # type: ignore[attr-defined]
    per_fit = 2 * len(y) * 8  # each fit's own train and test indices (int64) and as much again for the rest
    assert sent < 1.1 * data + 48 * per_fit, f"sent {sent} bytes for {data} bytes of X and y over 48 fits"


def test_workers_that_import_cloudburst_before_joblib_run_batches() -> None:
    # A worker unpickling a batch imports cloudburst first, then cloudburst.joblib_backend, whose
    # `import joblib` fires the registration hook while the backend module is half imported.
    import subprocess
    import sys

    script = (
        "import sys, cloudburst\n"
        "assert 'joblib' not in sys.modules\n"
        "from joblib import Parallel, delayed, parallel_config\n"
        "with parallel_config(backend='cloudburst', n_jobs=2, cloudburst_backend='local'):\n"
        "    print(Parallel()(delayed(abs)(-i) for i in range(5)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2, 3, 4]"
