"""The emulator's light mode: emulated Fargate tasks whose worker loops run on threads of the emulator's
process, so that many workers fit on one machine (``benchmarks/bench_thousand.py`` runs a thousand).

The failure table's rows for light mode: what happens to the task, and what the client must see.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.emulator import Emulator
from cloudburst.emulator.identities import ACCOUNT

from .conftest import wait_until

WORKERS = 60
ITEMS = 3000


@pytest.fixture
def light(emulator: Emulator) -> Iterator[Emulator]:
    """The session's emulator, starting tasks in light mode for the test; no task thread outlives it."""
    before = {t.ident for t in threading.enumerate()}
    with emulator.light_mode():
        yield emulator

    def task_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("emulated-task")]

    assert wait_until(lambda: not task_threads(), timeout=30), f"task threads left running: {task_threads()}"


def where(x: int) -> tuple[int, int, str]:
    """The item's value, and which process and thread computed it."""
    return x * 3, os.getpid(), threading.current_thread().name


def slow(x: int, marks: str) -> int:
    """Says which worker loop (a thread, in light mode) began it, in the file ``marks``, then takes a while."""
    with open(marks, "a") as fh:
        fh.write(threading.current_thread().name + "\n")
    time.sleep(0.5)
    return x + 1


def chatty(x: int) -> int:
    print(f"item says {x}")
    time.sleep(0.01)  # so that threads interleave
    print(f"item is done {x}")
    return x


def test_many_workers_on_threads_give_exact_results(light: Emulator) -> None:
    pids_before = set(light.worker_pids().values())
    with cloudburst.Executor(WORKERS, backend="fargate", progress=False) as ex:
        out = list(ex.map(where, range(ITEMS)))
    assert [v for v, _, _ in out] == [3 * x for x in range(ITEMS)]
    assert {pid for _, pid, _ in out} == {os.getpid()}, "light-mode workers run in the emulator's process"
    assert len({thread for _, _, thread in out}) > WORKERS // 4, "the items were spread over many worker loops"
    assert set(light.worker_pids().values()) == pids_before, "no worker process was started"


def test_each_threads_output_is_replayed_with_its_own_item(light: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    with cloudburst.Executor(4, backend="fargate", progress=False) as ex:
        assert list(ex.map(chatty, range(40), chunksize=2)) == list(range(40))
    lines = [line for line in capsys.readouterr().out.splitlines() if "item " in line]
    for x in range(40):
        assert f"[item {x}] item says {x}" in lines
        assert f"[item {x}] item is done {x}" in lines
    assert len(lines) == 80, "each line once, tagged with the item that printed it"


@pytest.mark.parametrize(
    ("how", "exit_code"),
    [
        pytest.param("kill", 137, id="SIGKILL: exit 137, its items run again elsewhere"),
        pytest.param("spot", 143, id="Spot interruption: SIGTERM, exit 143, its items run again elsewhere"),
    ],
)
def test_a_light_task_stopped_by_a_signal(light: Emulator, how: str, exit_code: int, tmp_path: Path) -> None:
    marks = tmp_path / "started"
    marks.touch()
    with cloudburst.Executor(2, backend="fargate", progress=False) as ex:
        futures = [ex.submit(slow, x, str(marks)) for x in range(8)]
        assert wait_until(lambda: bool(marks.read_text()), timeout=60)
        loop = marks.read_text().split()[0]
        machine = loop.rsplit(".", 1)[0]  # a worker loop is named <task id>.<k>, as the supervisor names them
        victim = next(t for t in light.workers() if t.task_id == machine)  # in the middle of an item
        if how == "kill":
            light.kill_worker(victim.task_id)
        else:
            light.interrupt_spot(victim.task_id)
        assert [f.result(timeout=120) for f in futures] == [x + 1 for x in range(8)]
    assert wait_until(lambda: victim.done, timeout=30)
    assert victim.task.containers[0].exitCode == exit_code


# ---------------------------------------------------------------------------- what lets a thousand fit


def test_a_queue_scan_reads_the_clock_once_not_per_message(emulator: Emulator) -> None:
    """moto read the time (through datetimes) twice per message per scan: W waiting polls on W messages in
    flight made W² clock reads a second."""
    import boto3
    import moto.core.utils
    from moto.sqs.models import sqs_backends

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="cloudburst-test-scan")["QueueUrl"]
    try:
        for _ in range(50):
            sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(10)])
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)["Messages"]
        queue = sqs_backends[ACCOUNT][emulator.region].queues["cloudburst-test-scan"]
        reads = 0
        real = moto.core.utils.utcnow

        def counted() -> Any:
            nonlocal reads
            reads += 1
            return real()

        moto.core.utils.utcnow = counted  # what moto's unix_time() reads the time with
        try:
            visible = queue.messages
            queue.approximate_number_of_messages_not_visible  # noqa: B018 - what every receive and send computes
        finally:
            moto.core.utils.utcnow = real
        assert len(visible) == 500 - len(got)
        assert reads <= 2, f"{reads} clock reads to scan 500 messages"
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_json_requests_find_their_service_without_motos_dispatcher(emulator: Emulator) -> None:
    """moto's dispatcher finds every request's service under one lock, for which a thousand workers' requests
    queued; a JSON service's application is found once."""
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    sqs = boto3.client("sqs")
    sqs.list_queues()  # the service's application is known from here on
    found = 0
    real = DomainDispatcherApplication.get_application

    def counted(self: DomainDispatcherApplication, environ: dict[str, Any]) -> Any:
        nonlocal found
        found += 1
        return real(self, environ)

    DomainDispatcherApplication.get_application = counted  # type: ignore[method-assign]
    try:
        for _ in range(20):
            sqs.list_queues()
    finally:
        DomainDispatcherApplication.get_application = real  # type: ignore[method-assign]
    assert found == 0, f"moto's dispatcher was asked {found} times"
