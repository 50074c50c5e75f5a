"""Pipelines of stages on every backend: the DAG's semantics, fan-out, seeds, failures, and the cache seen
from a run (what reran and what did not). Each test has its own cache (a folder, or a namespace in the
emulated bucket)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cloudburst as cb
from cloudburst.errors import StageError, WorkerDiedError

STAGE_BACKENDS = ["inline", "local", "fargate"]


@pytest.fixture(params=STAGE_BACKENDS)
def stage_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "fargate":
        request.getfixturevalue("emulator")
    return str(request.param)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CLOUDBURST_CACHE_NAMESPACE", f"t{uuid.uuid4().hex[:12]}")
    yield tmp_path


def wait_for_file(path: Path, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


# -- stages used by the tests (module level: workers load them as the user's own code) ------------------------


@cb.stage
def add(x: int, y: int = 0) -> int:
    return x + y


def deep_sum(values: Any) -> int:
    if isinstance(values, dict):
        return sum(deep_sum(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(deep_sum(v) for v in values)
    return int(values)


@cb.stage
def total(values: Any) -> int:
    return deep_sum(values)


@cb.stage
def square(x: int) -> int:
    return x * x


@cb.stage
def numbers(n: int) -> list[int]:
    return list(range(n))


@cb.stage
def draw(label: str) -> float:
    return float(cb.rng().uniform())


@cb.stage
def tally(log: str, value: int) -> int:
    with open(log, "a") as fh:
        fh.write(f"{value}\n")
    return value


@cb.stage
def meet(mine: str, other: str) -> str:
    """Both stages of a pair must be running at once: each waits for the other's mark."""
    Path(mine).touch()
    if not wait_for_file(Path(other)):
        raise TimeoutError(f"{other} never appeared: the stages did not run at the same time")
    return mine


@cb.stage
def wait_then(mark: str, value: int) -> int:
    if not wait_for_file(Path(mark)):
        raise TimeoutError(f"{mark} never appeared")
    return value


@cb.stage
def mark_then(mark: str, value: int) -> int:
    Path(mark).touch()
    return value


@cb.stage
def broken(x: int) -> int:
    raise ValueError(f"bad input {x}")


@cb.stage(retries=1)
def kill_worker(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_nodes_anywhere_in_arguments(stage_backend: str) -> None:
    a, b, c = add(1), add(2), add(3)
    nested = total({"x": [a, (b, 10)], "y": c})
    assert cb.compute(nested, backend=stage_backend, workers=2) == 1 + 2 + 10 + 3
    assert cb.compute(add(a, y=b), backend=stage_backend, workers=2) == 3


def test_independent_stages_run_at_the_same_time(stage_backend: str, tmp_path: Path) -> None:
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    pair = cb.compute(meet(first, second), meet(second, first), backend=stage_backend, workers=2, cache=False)
    assert pair == (first, second)


def test_a_stage_starts_when_its_own_inputs_are_ready(stage_backend: str, tmp_path: Path) -> None:
    # The slow branch ends only after the fast chain's *second* stage has run: a scheduler that waited for
    # whole levels would wait forever.
    mark = str(tmp_path / "mark")
    slow = wait_then(mark, 1)
    fast = mark_then(mark, add(add(1)))
    assert cb.compute(total([slow, fast]), backend=stage_backend, workers=3, cache=False) == 2


def test_a_node_used_twice_runs_once(stage_backend: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    once = tally(str(log), 7)
    assert cb.compute(add(once, once), total([once, once]), backend=stage_backend, cache=False) == (14, 14)
    assert log.read_text().split() == ["7"]


def test_map_over_a_list_and_over_a_node(stage_backend: str) -> None:
    over_list = square.map([1, 2, 3])
    over_node = square.map(numbers(5))
    whole = total(over_node)
    assert cb.compute(over_list, over_node, whole, backend=stage_backend, workers=2) == (
        [1, 4, 9],
        [0, 1, 4, 9, 16],
        30,
    )


def test_seeds_follow_the_pipeline_not_the_workers(stage_backend: str) -> None:
    def pipeline() -> list[Any]:
        return [draw("a"), draw("a"), draw("b")]

    first = cb.compute(*pipeline(), backend=stage_backend, workers=1, seed=5, cache=False)
    second = cb.compute(*reversed(pipeline()), backend=stage_backend, workers=3, seed=5, cache=False)
    assert first == tuple(reversed(second))
    assert len(set(first)) == 3  # siblings get streams of their own
    assert cb.compute(draw("a"), backend=stage_backend, seed=6, cache=False) != first[0]


def test_a_failing_branch_fails_its_dependents_and_spares_its_sibling(stage_backend: str) -> None:
    good = square(4)
    bad = add(broken(1), 1)
    with pytest.raises(StageError) as caught:
        cb.compute(good, bad, backend=stage_backend)
    error = caught.value
    assert "broken" in error.stage and isinstance(error.__cause__, ValueError)
    assert "bad input 1" in str(error) and error.remote_traceback and "broken" in error.remote_traceback
    assert len(error.failures) == 1
    value, report = cb.compute(square(4), backend=stage_backend, report=True)
    assert value == 16 and [record.status for record in report.stages] == ["cached"]


def test_errors_return_puts_the_exception_in_the_failed_nodes_place(stage_backend: str) -> None:
    failed = broken(2)
    values = cb.compute(square(3), failed, add(failed, 1), backend=stage_backend, errors="return")
    assert values[0] == 9
    assert isinstance(values[1], ValueError) and "bad input 2" in str(values[1])
    assert isinstance(values[2], StageError) and "broken" in values[2].stage


def test_a_second_run_is_all_cached_and_changed_inputs_rerun(stage_backend: str) -> None:
    def pipeline(n: int) -> Any:
        return total([square(add(n, 1)), square(2)])

    assert cb.compute(pipeline(1), backend=stage_backend) == 8
    value, report = cb.compute(pipeline(1), backend=stage_backend, report=True)
    assert value == 8 and {record.status for record in report.stages} == {"cached"}
    assert report.job_ids == []  # a fully cached run opens no job
    value, report = cb.compute(pipeline(2), backend=stage_backend, report=True)
    statuses = [record.status for record in report.stages]
    assert value == 13 and statuses.count("cached") == 1 and statuses.count("ran") == 3, statuses


def test_cache_false_runs_everything_and_writes_nothing(stage_backend: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    cb.compute(tally(str(log), 1), backend=stage_backend, cache=False)
    cb.compute(tally(str(log), 1), backend=stage_backend, cache=False)
    _, report = cb.compute(tally(str(log), 1), backend=stage_backend, report=True)
    assert log.read_text().split() == ["1", "1", "1"] and report.stages[0].status == "ran"


def test_a_stage_that_kills_its_worker_fails_with_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(StageError) as caught:
        cb.compute(add(kill_worker(1), 1), backend="local", workers=1)
    assert "kill_worker" in caught.value.stage
    assert isinstance(caught.value.__cause__, WorkerDiedError)


CTRL_C_SCRIPT = """
import os, sys, time
from pathlib import Path
import cloudburst as cb

folder = Path(sys.argv[1])

@cb.stage
def sleeper(i):
    (folder / f"pid-{i}").write_text(str(os.getpid()))
    time.sleep(120)
    return i

@cb.stage
def gather(values):
    return sum(values)

cb.compute(gather([sleeper(i) for i in range(2)]), backend="local", workers=2, progress=False)
"""


def test_ctrl_c_stops_every_stage_and_its_workers(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .conftest import process_gone, wait_until

    script = tmp_path / "pipeline.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 2, timeout=60), "the stages never started"
        pids = [int(path.read_text()) for path in tmp_path.glob("pid-*")]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err
    assert wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=15), "workers outlived Ctrl-C"


def test_a_long_cached_chain_settles_without_recursion() -> None:
    def chain() -> Any:
        x: Any = 0
        for _ in range(400):
            x = add(x, 1)
        return x

    assert cb.compute(chain(), backend="inline") == 400
    value, report = cb.compute(chain(), backend="inline", report=True)
    assert value == 400 and {record.status for record in report.stages} == {"cached"}


def test_a_local_store_refuses_keys_that_leave_it(tmp_path: Path) -> None:
    from cloudburst.backends.local import LocalStore

    store = LocalStore(tmp_path / "store")
    store.put("blobs/a/../b", b"kept")
    assert store.get("blobs/b") == b"kept"
    for key in ("../outside", "/etc/passwd", "blobs/../../outside", "..", "."):
        with pytest.raises(ValueError, match="escapes the store"):
            store.put(key, b"x")
    assert not (tmp_path / "outside").exists()


@cb.stage
def blob_of(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


def test_a_cached_value_whose_bytes_were_altered_runs_again(tmp_path: Path) -> None:
    assert len(cb.compute(blob_of(1 << 18), backend="inline")) == 1 << 18
    blobs = [path for path in (tmp_path / "cache").rglob("blobs/*") if path.is_file()]
    assert blobs, "the value should be stored as a blob in the cache"
    for path in blobs:
        path.write_bytes(b"altered" + path.read_bytes()[7:])
    value, report = cb.compute(blob_of(1 << 18), backend="inline", report=True)
    assert value == bytes(range(256)) * (1 << 10) and report.stages[0].status == "ran"


def test_equal_calls_run_once_when_the_cache_is_on(stage_backend: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    first, second = tally(str(log), 7), tally(str(log), 7)  # two nodes, one key
    assert cb.compute(total([first, second]), first, second, backend=stage_backend) == (14, 7, 7)
    assert log.read_text().split() == ["7"]
    draws = cb.compute(draw("z"), draw("z"), backend=stage_backend)  # unseeded: one draw, the same for both
    assert draws[0] == draws[1]
    assert cb.compute(draw("z"), draw("z"), backend=stage_backend) == draws  # and the next run agrees


@cb.stage(cpu=1, memory="2GB")
def spelled_out(x: int) -> int:
    return x + 1


@cb.stage(memory=2)
def spelled_short(x: int) -> int:
    return x * 2


def test_options_that_name_the_same_workers_share_an_executor() -> None:
    value, report = cb.compute(spelled_short(spelled_out(1)), backend="inline", report=True, cache=False)
    assert value == 4 and len(report.job_ids) == 1
