"""Stages on emulated Fargate: each shape on task definitions of its size, a shape's tasks stopped once its
stages are done, intermediate data never passing through the client, and a fully cached rerun that opens
no job."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import cloudburst as cb
from cloudburst.emulator import Emulator

from .conftest import wait_until

pytestmark = pytest.mark.usefixtures("emulator")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CLOUDBURST_CACHE_NAMESPACE", f"t{uuid.uuid4().hex[:12]}")
    yield


@cb.stage(cpu=0.5, memory="1GB")
def small(x: int) -> int:
    return x + 1


@cb.stage(cpu=1, memory="2GB")
def large(x: int) -> int:
    return x * 10


@cb.stage(cpu=0.5, memory="1GB")
def payload(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


@cb.stage(cpu=1, memory="2GB")
def length(data: bytes) -> int:
    return len(data)


@cb.stage(cpu=1, memory="2GB")
def wait_for(mark: str, value: int) -> int:
    import time

    end = time.monotonic() + 120
    while not Path(mark).exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{mark} never appeared")
        time.sleep(0.05)
    return value


def task_sizes(emulator: Emulator, job_ids: list[str]) -> set[tuple[str, str]]:
    """(cpu, memory) of the task definitions the jobs' tasks ran on."""
    ecs = boto3.client("ecs")
    cluster = emulator.resources["CLOUDBURST_CLUSTER"]
    sizes = set()
    for job_id in job_ids:
        arns: list[str] = []
        for status in ("RUNNING", "STOPPED"):
            arns += ecs.list_tasks(cluster=cluster, startedBy=f"cloudburst-{job_id[:24]}", desiredStatus=status)[
                "taskArns"
            ]
        for task in ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []:
            definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
            sizes.add((definition["cpu"], definition["memory"]))
    return sizes


def test_each_shape_runs_on_task_definitions_of_its_size(emulator: Emulator) -> None:
    value, report = cb.compute(large(small(1)), backend="fargate", report=True, cache=False)
    assert value == 20
    assert len(report.job_ids) == 2
    assert task_sizes(emulator, report.job_ids) == {("512", "1024"), ("1024", "2048")}
    shapes = {record.name.split(":")[-1]: record.shape for record in report.stages}
    assert shapes["small"]["cpu"] == 0.5 and shapes["large"]["cpu"] == 1


def test_a_shapes_workers_stop_when_none_of_its_stages_is_left(emulator: Emulator, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    results: list[Any] = []
    run = threading.Thread(
        target=lambda: results.append(cb.compute(small(1), wait_for(str(mark), 5), backend="fargate", cache=False))
    )
    run.start()
    ecs = boto3.client("ecs")
    cluster = emulator.resources["CLOUDBURST_CLUSTER"]

    def small_tasks() -> list[dict[str, Any]]:
        arns = ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]
        arns += ecs.list_tasks(cluster=cluster)["taskArns"]
        tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []
        return [t for t in tasks if cpu_of(t["taskDefinitionArn"]) == "512" and t["createdAt"].timestamp() >= started]

    cpus: dict[str, str] = {}

    def cpu_of(arn: str) -> str:
        if arn not in cpus:
            cpus[arn] = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["cpu"]
        return cpus[arn]

    import time

    started = time.time() - 1
    try:
        assert wait_until(lambda: bool(small_tasks()), timeout=90), "the small shape never started"
        assert wait_until(lambda: all(t["lastStatus"] == "STOPPED" for t in small_tasks()), timeout=90), (
            "the small shape's tasks kept running while only the large shape had work"
        )
    finally:
        mark.touch()
        run.join(timeout=180)
    assert results == [(2, 5)]


def test_intermediate_data_never_passes_through_the_client(emulator: Emulator) -> None:
    before = emulator.client_calls
    assert cb.compute(length(payload(4 << 20)), backend="fargate", cache=False) == 4 << 20
    after = emulator.client_calls
    reads = after.get("s3.GETObject", 0) - before.get("s3.GETObject", 0)
    # The consumer ran in another job (another shape), so the value crossed jobs: by a copy in the bucket.
    assert reads == 0, f"the client read {reads} objects; only the 4 MB value's consumer should have"


def test_a_fully_cached_rerun_opens_no_job(emulator: Emulator) -> None:
    def pipeline() -> Any:
        return [large(small(i)) for i in range(3)]

    assert cb.compute(*pipeline(), backend="fargate") == (10, 20, 30)
    before = emulator.client_calls
    value, report = cb.compute(*pipeline(), backend="fargate", report=True)
    after = emulator.client_calls
    made = {op: n - before.get(op, 0) for op, n in after.items() if n - before.get(op, 0)}
    assert value == ((10, 20, 30), report)[0] and {r.status for r in report.stages} == {"cached"}
    assert not [op for op in made if op.split(".")[0] in ("sqs", "iam", "ecs")], made
    assert sum(made.values()) <= len(report.stages) + 1, made  # one read per stage, plus the cache key
