"""The job's own defences: a broken job says so, healthy work is never failed for others' deaths, nothing
unauthenticated in the store or a dead-letter queue is acted on, and workers start only as work arrives."""

from __future__ import annotations

import gc
import json
import os
import signal
import time
import weakref
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

import cloudburst
from cloudburst.backends.aws.fargate import FargateBackend
from cloudburst.backends.base import WorkerExit
from cloudburst.backends.local import LocalBackend
from cloudburst.core.work import MapRun
from cloudburst.protocol.task import STARTED, TASK, Columns, Notice, TaskMessage, encode

from .conftest import process_gone, wait_until, worker_pids


def nap(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x


def meet(x: int, folder: str, workers: int) -> int:
    """Waits (at most 60 s) until ``workers`` distinct worker processes have each run one of these calls."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < workers and time.monotonic() < deadline:
        time.sleep(0.02)
    return x


def pid_then_nap(x: int, seconds: float, marker: str) -> int:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return x


def die_once(x: int, marker: str) -> int:
    """Kills its worker the first time it runs; returns x after that."""
    flag = Path(marker)
    if not flag.exists():
        flag.write_text("died")
        os._exit(3)
    return x


def die_once_on(x: int, bad: int, marker: str) -> int:
    if x == bad:
        return die_once(x, marker)
    return x


# ---------------------------------------------------------------------------- a broken executor


def test_a_broken_executor_fails_what_waits_and_refuses_new_work_at_once(backend: str) -> None:
    ex = cloudburst.Executor(2, backend=backend, env={"PYTHONHOME": "/nonexistent"}, progress=False)
    try:
        waiting = [ex.submit(nap, i) for i in range(3)]
        for future in waiting:
            with pytest.raises(cloudburst.WorkerDiedError, match="keep failing before they run anything"):
                future.result(timeout=90)
        began = time.monotonic()
        with pytest.raises(cloudburst.BrokenExecutorError, match="can no longer run work") as info:
            ex.submit(nap, 1)
        assert isinstance(info.value, BrokenExecutor)  # what ProcessPoolExecutor's users catch
        assert isinstance(info.value.cause, cloudburst.WorkerDiedError)
        with pytest.raises(cloudburst.BrokenExecutorError):
            ex.map(nap, range(3))
        assert time.monotonic() - began < 5
    finally:
        began = time.monotonic()
        ex.shutdown(wait=True)
        assert time.monotonic() - began < 30, "shutdown(wait=True) did not return promptly"


def test_cost_limit_results_hold_only_finished_items() -> None:
    # CostLimitExceeded.results is read while other chunks are still being failed: an item that has
    # not come back must not show up there as None.
    run = MapRun(nap, None, Columns((range(6),)), 0, None)  # type: ignore[arg-type]
    run.fill(0, [10, 11], {})
    run.fill(4, [None, 15], {0: RuntimeError("item 4 failed")})
    assert run.finished_values() == {0: 10, 1: 11, 5: 15}


# ---------------------------------------------------------------------------- no healthy work failed


def test_idle_workers_that_die_do_not_fail_running_work(tmp_path: Path) -> None:
    marker = tmp_path / "busy.pid"
    met = tmp_path / "met"
    met.mkdir()
    with cloudburst.Executor(4, progress=False) as ex:
        # Every worker up: each of the four runs one call (a short map could be run by the first one up alone).
        assert list(ex.map(meet, range(4), [str(met)] * 4, [4] * 4, chunksize=1)) == list(range(4))
        assert len(os.listdir(met)) == 4
        running = ex.submit(pid_then_nap, 42, 6.0, str(marker))
        assert wait_until(marker.exists, timeout=30)
        busy = int(marker.read_text())
        idle = [pid for pid in worker_pids(ex).values() if pid != busy and not process_gone(pid)]
        assert len(idle) >= 3, idle
        for pid in idle[:3]:
            os.kill(pid, signal.SIGKILL)
        assert running.result(timeout=60) == 42  # never failed for the idle workers' deaths
        # The executor still works, on workers started in the killed ones' place.
        assert list(ex.map(nap, range(20))) == list(range(20))
        assert ex.submit(nap, 7).result(timeout=60) == 7


def test_a_started_notice_read_after_its_workers_death_sends_the_task_again(emulator: Any) -> None:
    """The two events may reach the client in either order. Here the death comes first: then the task
    must go back to the queue at once, not when its lease (60 s) runs out."""
    emulator.agent.cold_start = 3.0  # no real worker takes the task before this test does
    try:
        with cloudburst.Executor(1, backend="fargate", progress=False) as ex:
            job = ex._job
            future = ex.submit(nap, 5)
            sqs = boto3.client("sqs")
            url = sqs.get_queue_url(QueueName=f"cloudburst-{ex.job_id[:20]}-tasks")["QueueUrl"]
            taken = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=10)["Messages"]
            # The worker "ghost" took the task and died; its death is handled before its started notice.
            job.watch.on_exit(WorkerExit("ghost", 137, "OutOfMemoryError", "", False))
            notice = Notice((1,), "ghost", (1,), receipts=(taken[0]["ReceiptHandle"],))
            job.resources.results.send_batch([encode(job.key, STARTED, 0, notice, job=job.tag)])
            began = time.monotonic()
            assert future.result(timeout=40) == 5
            assert time.monotonic() - began < 40
    finally:
        emulator.agent.cold_start = 0.0


def test_a_task_copied_into_the_dead_letter_queue_does_not_fail(emulator: Any) -> None:
    with cloudburst.Executor(1, backend="fargate", progress=False) as ex:
        future = ex.submit(nap, 9, 4.0)
        assert wait_until(future.running, timeout=60)
        job = ex._job
        # A valid sealed copy of the running task's message, put where the queue puts tasks it gave up on.
        message = TaskMessage(1, job.packer.function(nap), job.packer.pack([((9, 4.0), {})]), [0], with_kwargs=True)
        sqs = boto3.client("sqs")
        url = sqs.get_queue_url(QueueName=f"cloudburst-{ex.job_id[:20]}-dlq")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=_sqs_body(encode(job.key, TASK, 1, message, job=job.tag)))
        job.guards.next_dead_letter_check = 0.0  # look now rather than in 15 s
        assert future.result(timeout=60) == 9


def _sqs_body(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------- nothing unauthenticated


def test_a_forged_cancel_marker_is_ignored(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(1, retries=2)
    # The first task (id 1) will be delivered twice: its first worker dies. A cancel marker written by
    # someone without the job key must not make the second delivery vanish.
    ex._job.resources.store.put("control/cancelled/1", b"")
    assert ex.submit(die_once, 5, str(tmp_path / "died")).result(timeout=90) == 5


class QuickControlLocal(LocalBackend):
    control_period = 0.5  # the workers read the job's state every half second, so the test forges for seconds


class QuickControlFargate(FargateBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control_period = 0.5  # Fargate's follows client_timeout: a quarter of it, 2.5 s at the least


QUICK_CONTROL = {"local": QuickControlLocal, "fargate": QuickControlFargate}


def test_a_forged_stop_flag_does_not_stop_the_workers(make_executor: Any, backend: str) -> None:
    ex = make_executor(2, backend=QUICK_CONTROL[backend].import_path())
    assert ex._job.backend.control_period == 0.5
    assert list(ex.map(nap, range(4))) == list(range(4))
    pids = worker_pids(ex)
    assert pids
    forged = {"heartbeat": time.time(), "stopped": True}
    period = ex._job.backend.control_period
    deadline = time.monotonic() + 2.5 * period
    while time.monotonic() < deadline:  # the client rewrites it now and then: keep forging
        ex._job.resources.store.put("control/state", json.dumps(forged).encode())
        time.sleep(0.1)
    assert all(not process_gone(pid) for pid in pids.values()), "a forged stop flag stopped workers"
    assert list(ex.map(nap, range(4))) == list(range(4))


def test_an_altered_function_blob_is_reported_as_altered(executor: cloudburst.Executor) -> None:
    ref = executor._job.packer.function(nap)
    executor._job.resources.store.put(ref.key, b"not the function")
    with pytest.raises(cloudburst.UnpicklingError, match="altered in the store") as info:
        executor.submit(nap, 1).result(timeout=60)
    assert "module it needs may be missing" not in str(info.value)


# ---------------------------------------------------------------------------- no stale references


def test_a_map_that_saw_a_death_is_not_kept(tmp_path: Path) -> None:
    with cloudburst.Executor(1, retries=2, progress=False) as ex:
        run = ex.start_map(die_once_on, range(6), [2] * 6, [str(tmp_path / "died")] * 6, chunksize=6)
        assert _finished(run).values == list(range(6))
        ref = weakref.ref(run)
        del run
        gc.collect()
        assert ref() is None, "the executor still holds a finished map run"


def _finished(run: MapRun) -> MapRun:
    with run.cond:
        assert run.cond.wait_for(lambda: run.done == len(run), timeout=60)
    return run


# ---------------------------------------------------------------------------- workers as work arrives


def test_no_more_workers_than_work(emulator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with cloudburst.Executor(50, backend="fargate", progress=False) as ex:
        assert list(ex.map(nap, range(4))) == [0, 1, 2, 3]
        started = ex._job.resources.launcher.task_ids()  # type: ignore[attr-defined]
    assert 1 <= len(started) <= 4, f"{len(started)} workers started for 4 items"
    err = capsys.readouterr().err
    assert "up to 50 workers ×" not in err
    line = next(line for line in err.splitlines() if "≈ $" in line)
    assert "starting 1 worker " in line or "starting 4 workers " in line, line


# ---------------------------------------------------------------------------- messages say what is true


def test_no_retry_is_announced_when_none_will_happen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with cloudburst.Executor(1, retries=0, progress=False) as ex, pytest.raises(cloudburst.WorkerDiedError):
        ex.submit(die_once, 1, str(tmp_path / "died")).result(timeout=60)
    err = capsys.readouterr().err
    assert "retrying" not in err and "running it again" not in err
    assert "no retries left (retries=0)" in err


def test_item_labels_count_within_each_map(capsys: pytest.CaptureFixture[str]) -> None:
    with cloudburst.Executor(1, progress=False) as ex:
        assert list(ex.map(print, ["first"] * 3)) == [None] * 3
        assert list(ex.map(print, ["second"] * 2)) == [None] * 2
        ex.submit(print, "submitted").result(timeout=30)
    out = capsys.readouterr().out
    assert "[item 0] second" in out and "[item 1] second" in out, out
    assert "[item 0] submitted" in out, out
    assert "[item 3]" not in out and "[item 4]" not in out, out
