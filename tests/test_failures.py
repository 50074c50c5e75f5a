"""The failure table: every failure cloudburst handles, the error it must raise, and what must survive.

Each row of ``ITEM_FAILURES`` submits items 0..5, where item 2 is the bad one and
shares its task (chunk) with others: the bad item's future must fail with the
row's exception and message, every other item must return its value, and the
executor must stay usable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.backends.local import LocalBackend

from .conftest import process_gone, wait_until, worker_pids

BAD = 2
CLIENT_PID = os.getpid()


# ---------------------------------------------------------------------------- hostile objects


def _explode_in_worker(client_pid: int) -> object:
    if os.getpid() != client_pid:
        raise ImportError("module 'only_on_the_client' is not installed on this worker")
    return "fine"


def _explode_in_client(client_pid: int) -> object:
    if os.getpid() == client_pid:
        raise ImportError("module 'only_on_the_worker' is not installed on the client")
    return "fine"


class WorkerHostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode_in_worker, (CLIENT_PID,))


class ClientHostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode_in_client, (CLIENT_PID,))


# ---------------------------------------------------------------------------- bad items


def identity(x: Any) -> Any:
    return x


def return_lock_on_bad(x: int) -> Any:
    return threading.Lock() if x == BAD else x


def return_client_hostile_on_bad(x: int) -> Any:
    return ClientHostile() if x == BAD else x


def exit_on_bad(x: int) -> int:
    if x == BAD:
        sys.exit(4)
    return x


def sigkill_on_bad(x: int) -> int:
    if x == BAD:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def os_exit_on_bad(x: int) -> int:
    if x == BAD:
        os._exit(3)
    return x


def segfault_on_bad(x: int) -> int:
    if x == BAD:
        ctypes.string_at(0)
    return x


def eat_memory_on_bad(x: int) -> int:
    if x == BAD:
        hog = bytearray(600 * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(5)
    return x


def keyboard_interrupt_on_bad(x: int) -> int:
    if x == BAD:
        raise KeyboardInterrupt
    return x


@dataclass
class Row:
    name: str
    fn: Callable[[Any], Any]
    error: type[BaseException]
    match: str | None
    bad_arg: Callable[[], Any] = lambda: BAD
    options: dict[str, Any] = field(default_factory=dict)
    check: Callable[[BaseException], None] | None = None


def _exit_code(code: int) -> Callable[[BaseException], None]:
    def check(exc: BaseException) -> None:
        assert isinstance(exc, cloudburst.WorkerDiedError)
        # A process killed by signal N: -N from subprocess, 128+N from a container.
        assert exc.exit_code in (code, 128 - code if code < 0 else code), exc.exit_code
        assert exc.attempts == 3  # retries=2: three deaths

    return check


ITEM_FAILURES = [
    Row(
        "unpicklable argument",
        identity,
        cloudburst.PicklingError,
        r"item 2: cannot send _thread.lock",
        bad_arg=threading.Lock,
    ),
    Row(
        "argument fails to unpickle on the worker",
        identity,
        cloudburst.UnpicklingError,
        r"arguments of items 2 could not be unpickled on the worker.*only_on_the_client",
        bad_arg=WorkerHostile,
    ),
    Row(
        "unpicklable result",
        return_lock_on_bad,
        cloudburst.PicklingError,
        r"result of item 2 cannot be pickled: _thread.lock",
    ),
    Row(
        "result fails to unpickle in the client",
        return_client_hostile_on_bad,
        cloudburst.UnpicklingError,
        r"result of item 2 came back but could not be unpickled here.*only_on_the_worker",
    ),
    Row("task calls sys.exit", exit_on_bad, cloudburst.TaskExitError, r"item 2 called sys.exit\(4\)"),
    Row("task raises KeyboardInterrupt", keyboard_interrupt_on_bad, KeyboardInterrupt, None),
    Row(
        "worker killed by SIGKILL",
        sigkill_on_bad,
        cloudburst.WorkerDiedError,
        r"item 2: the worker running it died 3 time\(s\).*killed by SIGKILL",
        check=_exit_code(-9),
    ),
    Row(
        "os._exit inside a task",
        os_exit_on_bad,
        cloudburst.WorkerDiedError,
        r"died 3 time\(s\).*exit code 3",
        check=_exit_code(3),
    ),
    Row(
        "segfault",
        segfault_on_bad,
        cloudburst.WorkerDiedError,
        r"killed by SIGSEGV(?s:.*)Last worker output:\nFatal Python error: Segmentation fault(?s:.*)segfault_on_bad",
        check=_exit_code(-11),
    ),
    Row(
        "out of memory",
        eat_memory_on_bad,
        cloudburst.WorkerDiedError,
        r"OutOfMemoryError: (the worker used \d+ MiB, over its memory limit of 512 MiB|Container killed due to memory)",
        options={"memory": "512MB", "cpu": 0.25},
        check=_exit_code(137),
    ),
]


@pytest.mark.parametrize("row", ITEM_FAILURES, ids=lambda r: r.name)
def test_item_failure(row: Row, make_executor: Any) -> None:
    ex = make_executor(2, **row.options)
    args = [row.bad_arg() if i == BAD else i for i in range(6)]
    futures = [ex.submit(row.fn, a) for a in args]
    with pytest.raises(row.error, match=row.match) as info:
        futures[BAD].result(timeout=90)
    if row.check:
        row.check(info.value)
    survivors = {i: f.result(timeout=60) for i, f in enumerate(futures) if i != BAD and not f.exception(timeout=60)}
    assert survivors == {i: i for i in range(6) if i != BAD}
    assert ex.submit(abs, -5).result(timeout=60) == 5  # still usable


def test_map_errors_return_isolates_the_killer(backend: str) -> None:
    out = cloudburst.map(
        sigkill_on_bad, range(30), workers=2, backend=backend, chunksize=10, errors="return", progress=False, retries=1
    )
    assert isinstance(out[BAD], cloudburst.WorkerDiedError)
    assert [v for i, v in enumerate(out) if i != BAD] == [i for i in range(30) if i != BAD]


def die_first_time(x: int, marker: str) -> int:
    path = Path(marker)
    if x == BAD and not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def test_transient_worker_death_is_retried(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(2)
    futures = [ex.submit(die_first_time, i, str(tmp_path / "marker")) for i in range(6)]
    assert [f.result(timeout=60) for f in futures] == [i * 10 for i in range(6)]
    assert (tmp_path / "marker").exists()


def test_retries_zero_fails_on_first_death(make_executor: Any) -> None:
    ex = make_executor(1, retries=0)
    with pytest.raises(cloudburst.WorkerDiedError, match=r"died 1 time\(s\)") as info:
        ex.submit(sigkill_on_bad, BAD).result(timeout=60)
    assert info.value.attempts == 1


def test_unpicklable_function_is_refused_at_submit(executor: cloudburst.Executor) -> None:
    lock = threading.Lock()
    with pytest.raises(cloudburst.PicklingError, match=r"cannot send the function .*<lambda>.*created inside"):
        executor.submit(lambda: lock)
    assert executor.submit(abs, -1).result(timeout=30) == 1


def test_function_fails_to_unpickle_on_the_worker(executor: cloudburst.Executor) -> None:
    hostile = WorkerHostile()

    def uses_hostile(x: int) -> int:
        return x if hostile else -x

    futures = [executor.submit(uses_hostile, i) for i in range(3)]
    for future in futures:
        with pytest.raises(cloudburst.UnpicklingError, match=r"function could not be unpickled.*only_on_the_client"):
            future.result(timeout=30)
    assert executor.submit(abs, -2).result(timeout=30) == 2


def test_workers_that_cannot_start(backend: str) -> None:
    ex = cloudburst.Executor(1, backend=backend, env={"PYTHONHOME": "/nonexistent"})
    try:
        with pytest.raises(cloudburst.WorkerDiedError, match=r"keep failing before they run anything") as info:
            ex.submit(abs, -1).result(timeout=60)
        assert info.value.exit_code not in (0, None)
    finally:
        ex.terminate()


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
