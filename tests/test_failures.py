"""Failures that need the backend's internals, options of their own, or a client process of their own.

The failure table itself (each bad item's error, and that everything else survives) is cloudburst.testing's
contract suite (``cloudburst.testing.failures``): it runs in tests/test_contract_*.py on every backend.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.backends.local import LocalBackend
from cloudburst.testing.failures import BAD, FailureContract, Row, died_with

from .conftest import process_gone, wait_until, worker_pids


def eat_memory_on_bad(x: int) -> int:
    if x == BAD:
        hog = bytearray(600 * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(5)
    return x


#: rows of the failure table that need options of their own (here: a memory limit, which the contract suite
#: does not set), run through the contract's row body on a fresh executor
LIMIT_ROWS = [
    (Row("out of memory", eat_memory_on_bad, cloudburst.WorkerDiedError,
         r"OutOfMemoryError: (the worker used \d+ MiB, over its memory limit of 512 MiB|Container killed due to mem)",
         check=died_with(137)),
     {"memory": "512MB", "cpu": 0.25}),
]  # fmt: skip


@pytest.mark.parametrize(("row", "options"), LIMIT_ROWS, ids=lambda v: getattr(v, "name", ""))
def test_item_failure_under_a_limit(row: Row, options: dict[str, Any], make_executor: Any) -> None:
    FailureContract().test_failure_row(row, make_executor(2, **options))


# ---------------------------------------------------------------------------- leases and tampering


class ShortLeaseBackend(LocalBackend):
    lease_seconds = 1.0


def slow_square(x: int) -> int:
    time.sleep(1.5)
    return x * x


def test_lease_expiry_redelivers_and_first_result_wins() -> None:
    ex = cloudburst.Executor(2, backend=ShortLeaseBackend.import_path())
    try:
        future = ex.submit(slow_square, 7)
        assert wait_until(lambda: future.running(), timeout=30)
        time.sleep(0.2)
        # Freeze whichever worker holds the task: it stops extending its lease.
        holder = ex._job.table.tasks[1].workers[-1]
        pid = ex._job.worker_pids()[holder]
        os.kill(pid, signal.SIGSTOP)
        try:
            assert future.result(timeout=30) == 49  # another worker ran it after the lease ran out
        finally:
            os.kill(pid, signal.SIGCONT)
        assert ex.submit(slow_square, 3).result(timeout=30) == 9
    finally:
        ex.terminate()


def test_a_forged_message_cannot_fail_a_task(make_executor: Any) -> None:
    """Someone who can write to the queue sends junk naming a task in flight: the task still succeeds."""
    from cloudburst.protocol.task import encode

    ex = make_executor(1)
    blocker = ex.submit(slow_square, 2)
    assert wait_until(blocker.running, timeout=30)
    blocker_id = max(ex._job.table.tasks)
    # Junk sealed with some other key, naming the next tasks, queued ahead of them.
    tag = ex._job.tag
    forged = [encode(os.urandom(32), b"T", blocker_id + n, "not the job's key", job=tag) for n in (1, 1, 2, 2, 3, 3)]
    ex._job.resources.tasks.send_batch(forged)
    victim = ex.submit(abs, -5)
    assert wait_until(lambda: len(ex._job.table.tasks) == 2, timeout=10)
    assert blocker_id < max(ex._job.table.tasks) <= blocker_id + 3  # the forgeries name it
    assert victim.result(timeout=30) == 5
    assert blocker.result(timeout=30) == 4


# ---------------------------------------------------------------------------- lifecycle


SCRIPT_PRELUDE = """
import os, sys, time
import cloudburst

def slow(x):
    time.sleep(30)
    return x
"""


def run_script(body: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "client.py"
    script.write_text(SCRIPT_PRELUDE + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_pids(proc: subprocess.Popen[str]) -> list[int]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), (line, proc.stderr.read() if proc.stderr else "")
    return [int(p) for p in line.split()[1:]]


PRINT_PIDS = "print('PIDS', *ex._job.worker_pids().values(), flush=True)\n"


def test_ctrl_c_during_map_stops_workers(tmp_path: Path) -> None:
    proc = run_script(
        """
        with cloudburst.Executor(2) as ex:
            results = ex.map(slow, range(10))
            time.sleep(0.5)
        """.replace("            time.sleep(0.5)\n", "            " + PRINT_PIDS + "            list(results)\n"),
        tmp_path,
    )
    pids = read_pids(proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=10)


def test_client_killed_workers_stop(tmp_path: Path) -> None:
    proc = run_script(
        "ex = cloudburst.Executor(2)\nfut = ex.submit(slow, 1)\n" + PRINT_PIDS + "time.sleep(60)\n", tmp_path
    )
    pids = read_pids(proc)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=10)


def test_exit_without_shutdown_stops_workers(tmp_path: Path) -> None:
    proc = run_script("ex = cloudburst.Executor(2)\nfut = ex.submit(slow, 1)\n" + PRINT_PIDS, tmp_path)
    pids = read_pids(proc)
    assert proc.wait(timeout=30) == 0
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=10)


def test_dropped_executor_stops_workers(backend: str) -> None:
    import gc

    ex = cloudburst.Executor(2, backend=backend)
    assert ex.submit(abs, -1).result(timeout=30) == 1
    pids = worker_pids(ex)
    assert pids
    del ex
    gc.collect()
    assert wait_until(lambda: all(process_gone(p) for p in pids.values()), timeout=15)


def test_exception_in_with_block_cancels_and_stops(backend: str) -> None:
    with pytest.raises(ZeroDivisionError):  # noqa: SIM117
        with cloudburst.Executor(1, backend=backend) as ex:
            running = ex.submit(time.sleep, 0.5)
            queued = [ex.submit(abs, -i) for i in range(5)]
            wait_until(running.running, timeout=30)
            pids = worker_pids(ex)
            assert pids
            1 / 0  # noqa: B018
    assert all(f.cancelled() for f in queued)
    assert wait_until(lambda: all(process_gone(p) for p in pids.values()), timeout=10)


# ---------------------------------------------------------------------------- bad parameters

BAD_PARAMETERS = [
    (
        {"workerz": 3},
        cloudburst.UnknownParameterError,
        r"unknown parameter 'workerz' \(did you mean 'workers'\?\).*valid",
    ),
    ({"workers": 0}, cloudburst.ConfigurationError, r"workers=0 must be at least 1"),
    ({"workers": 2.5}, cloudburst.ConfigurationError, r"workers=2.5 must be a whole number"),
    ({"memory": "2 gigs"}, cloudburst.ConfigurationError, r"unknown unit 'gigs'.*'2GB'"),
    ({"memory": "lots"}, cloudburst.ConfigurationError, r"not a memory size.*'2GB'"),
    ({"memory": 8192}, cloudburst.ConfigurationError, r"did you mean memory='8192MB'"),
    ({"cpu": 0}, cloudburst.ConfigurationError, r"cpu=0 must be a positive number"),
    ({"retries": -1}, cloudburst.ConfigurationError, r"retries=-1 must be a whole number ≥ 0"),
    ({"seed": "abc"}, cloudburst.ConfigurationError, r"seed='abc' must be a non-negative integer"),
    (
        {"backend": "nowhere"},
        cloudburst.ConfigurationError,
        r"backend='nowhere' is not known; available backends: .*local",
    ),
    ({"progress": "sometimes"}, cloudburst.ConfigurationError, r"progress='sometimes' must be True, False or 'auto'"),
    ({"workers": 2, "max_workers": 3}, cloudburst.ConfigurationError, r"disagree"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_PARAMETERS, ids=lambda v: str(v)[:30])
def test_bad_parameters_are_refused_before_anything_starts(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        cloudburst.Executor(**kwargs)


def test_bad_map_parameters() -> None:
    with pytest.raises(cloudburst.ConfigurationError, match=r"errors='ignore' must be one of"):
        cloudburst.map(abs, [1], errors="ignore")  # type: ignore[arg-type]
    with cloudburst.Executor(1) as ex, pytest.raises(cloudburst.ConfigurationError, match=r"chunksize=0"):
        ex.map(abs, [1], chunksize=0)


# ---------------------------------------------------------------------------- image="python": installing at start


NOT_INSTALLED = r"(?s)environment could not be installed; no more workers are started \(last: .*exit code 78"


@contextlib.contextmanager
def _on_stock_python(
    emulator: Any, stock_python: tuple[Path, Path], requirements: Path
) -> Iterator[cloudburst.Executor]:
    from cloudburst.emulator import network_env

    with emulator.image(stock_python[0], network_env()):
        ex = cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements))
        try:
            yield ex
        finally:
            ex.terminate()


def test_a_package_that_will_not_install_is_named(
    emulator: Any, stock_python: tuple[Path, Path], tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(stock_python[1].read_text() + "zzz-no-such-package-cloudburst==0.0.1\n")
    with (
        _on_stock_python(emulator, stock_python, requirements) as ex,
        pytest.raises(
            cloudburst.WorkerDiedError, match=r"(?s)environment could not be installed; no more workers.*zzz-no-such"
        ),
    ):
        ex.submit(abs, -1).result(timeout=240)


def test_a_bundle_changed_after_upload_is_refused(
    emulator: Any, stock_python: tuple[Path, Path], tmp_path: Path
) -> None:
    import boto3

    requirements = tmp_path / "requirements.txt"  # its own bundle: a different tag from the other tests'
    requirements.write_text(stock_python[1].read_text() + f"packaging=={metadata.version('packaging')}\n")
    s3 = boto3.client("s3")
    with _on_stock_python(emulator, stock_python, requirements) as ex:
        bundle = ex._job.backend.bundle  # type: ignore[attr-defined]
        bucket, key = bundle.removeprefix("s3://").split("#")[0].split("/", 1)
        original = s3.get_object(Bucket=bucket, Key=key)
        s3.put_object(Bucket=bucket, Key=key, Body=b"PK not what was uploaded", Metadata=original["Metadata"])
        try:
            with pytest.raises(
                cloudburst.WorkerDiedError,
                match=r"(?s)environment could not be installed; no more workers.*changed after it was",
            ):
                ex.submit(abs, -1).result(timeout=240)
        finally:
            s3.delete_object(Bucket=bucket, Key=key)


def test_index_logins_that_ecs_cannot_read_stop_the_workers_starting(emulator: Any, tmp_path: Path) -> None:
    import boto3

    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--extra-index-url https://bot:gone-{os.getpid()}@corp.example/simple\ntblib==3.2.2\n")
    ex = cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements))
    boto3.client("ssm").delete_parameter(Name=ex._job.backend.netrc_parameter)  # type: ignore[attr-defined]
    try:
        with pytest.raises(
            cloudburst.WorkerDiedError,
            match=r"keep failing before they run anything.*failed to start: ResourceInitializationError: "
            r"unable to retrieve secret /cloudburst/index/",
        ):
            ex.submit(abs, -1).result(timeout=120)
    finally:
        ex.terminate()


def test_a_bundle_deleted_before_the_workers_start_is_explained(
    emulator: Any, stock_python: tuple[Path, Path], tmp_path: Path
) -> None:
    import boto3

    requirements = tmp_path / "requirements.txt"  # its own bundle
    requirements.write_text(stock_python[1].read_text() + f"urllib3=={metadata.version('urllib3')}\n")
    with _on_stock_python(emulator, stock_python, requirements) as ex:
        bundle = ex._job.backend.bundle  # type: ignore[attr-defined]
        bucket, key = bundle.removeprefix("s3://").split("#")[0].split("/", 1)
        boto3.client("s3").delete_object(Bucket=bucket, Key=key)  # `cloudburst env prune`, say
        with pytest.raises(cloudburst.WorkerDiedError, match=NOT_INSTALLED + r".*NoSuchKey.*start the job again"):
            ex.submit(abs, -1).result(timeout=240)


def test_exit_78_stops_starting_workers_only_until_one_has_worked(tmp_path: Path) -> None:
    """A worker that cannot install its environment exits 78: before any worker has taken a task, every
    other would fail the same way, so the job stops at the first; after one has, it may be a blip."""
    site = tmp_path / "site"
    site.mkdir()
    broken = tmp_path / "broken"
    (site / "sitecustomize.py").write_text(f"import os\nif os.path.exists({str(broken)!r}):\n    os._exit(78)\n")
    env = {"PYTHONPATH": str(site)}
    broken.touch()
    ex = cloudburst.Executor(1, env=env)
    try:
        with pytest.raises(cloudburst.WorkerDiedError, match=r"environment could not be installed"):
            ex.submit(abs, -1).result(timeout=60)
        assert ex._job.stats["worker_deaths"] == 1  # no second worker was started
    finally:
        ex.terminate()
    broken.unlink()
    ex = cloudburst.Executor(1, env=env)
    try:
        assert ex.submit(abs, -1).result(timeout=60) == 1  # a worker has worked
        broken.touch()
        for pid in worker_pids(ex).values():
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(cloudburst.WorkerDiedError, match=r"environment could not be installed"):
            ex.submit(abs, -2).result(timeout=60)
        assert ex._job.stats["worker_deaths"] >= 3  # replacements were tried before giving up
    finally:
        ex.terminate()
