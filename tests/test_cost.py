"""Cost: Fargate's billing rule applied to the tasks' own timestamps, the hard limit, the alert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import cloudburst
from cloudburst.backends.aws.pricing import Prices, prices
from cloudburst.emulator import Emulator

from .conftest import assert_nothing_left_in_aws, wait_until

HOURLY_1CPU_2GB = 0.04048 + 2 * 0.004445  # us-east-1, x86, on demand


def nap(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@pytest.fixture
def cold_start(emulator: Emulator) -> Iterator[Emulator]:
    assert emulator.agent is not None
    yield emulator
    emulator.agent.cold_start = 0.0
    emulator.clear_faults()


def test_prices_come_from_the_price_list_and_match_the_published_ones(emulator: Emulator) -> None:
    found = prices("us-east-1")
    assert found.source.startswith("EMULATED: the emulator's Price List stub")  # not AWS's: it says so
    assert found.hourly(1024, 2048) == pytest.approx(HOURLY_1CPU_2GB)
    assert found.hourly(1024, 2048, arch="arm64") == pytest.approx(0.03238 + 2 * 0.00356)
    assert found.hourly(1024, 2048, spot=True) < found.hourly(1024, 2048)
    assert Prices().hourly(1024, 2048, storage_gb=50) == pytest.approx(HOURLY_1CPU_2GB + 30 * 0.000111)


def test_final_cost_is_the_billing_rule_applied_to_the_tasks_timestamps(emulator: Emulator) -> None:
    ex = cloudburst.Executor(2, backend="fargate")
    assert list(ex.map(nap, range(4), [0.5] * 4, chunksize=1)) == list(range(4))
    ex.shutdown()
    launcher = ex._job.resources.launcher
    ids = sorted(launcher.task_ids())
    ecs = boto3.client("ecs")
    cluster = emulator.resources["CLOUDBURST_CLUSTER"]

    def all_stopped() -> bool:
        launcher.poll()
        tasks = ecs.describe_tasks(cluster=cluster, tasks=ids)["tasks"]
        return all(t["lastStatus"] == "STOPPED" for t in tasks) and launcher.running() == 0

    assert wait_until(all_stopped, timeout=30)
    by_hand = 0.0
    for task in ecs.describe_tasks(cluster=cluster, tasks=ids)["tasks"]:
        seconds = (task["stoppedAt"] - task["pullStartedAt"]).total_seconds()
        by_hand += max(60.0, seconds) * HOURLY_1CPU_2GB / 3600  # per second, one-minute minimum
    assert by_hand > 0
    assert ex.cost == pytest.approx(by_hand, rel=1e-6)
    assert_nothing_left_in_aws(emulator, ex.job_id)


def test_cost_limit_stops_the_run_and_keeps_finished_results(
    cold_start: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cold_start.agent is not None
    cold_start.agent.cold_start = 3.0
    one_minute = HOURLY_1CPU_2GB / 60
    # A local worker finishes the quick items while the Fargate task starts; once the task bills,
    # its first minute plus the minute it would run next pass the limit.
    seconds = [0.05] * 10 + [60.0] * 10
    with pytest.raises(cloudburst.CostLimitExceeded, match=r"max_cost_per_job=\$0.0012") as info:
        cloudburst.map(
            nap,
            range(20),
            seconds,
            backend="fargate",
            workers=1,
            local_workers=1,
            max_cost_per_job=1.5 * one_minute,
            chunksize=1,
            progress=False,
        )
    exc = info.value
    assert exc.limit == pytest.approx(1.5 * one_minute)
    assert exc.results and all(exc.results[i] == i for i in exc.results)
    assert set(exc.results) <= set(range(10))
    assert "its workers were stopped" in capsys.readouterr().err
    ecs = boto3.client("ecs")
    cluster = cold_start.resources["CLOUDBURST_CLUSTER"]
    running = ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"]
    assert wait_until(
        lambda: all(
            t["lastStatus"] == "STOPPED" for t in ecs.describe_tasks(cluster=cluster, tasks=running or ["x"])["tasks"]
        ),
        timeout=30,
    )


def test_cost_alert_is_shown_once(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    ex: Any = cloudburst.Executor(1, backend="fargate", cost_alert_threshold=0.0001)
    try:
        assert ex.submit(nap, 1, 0.2).result(timeout=60) == 1
        assert wait_until(lambda: "cost_alert_threshold" in capsys.readouterr().err, timeout=10)
        assert ex.submit(nap, 2, 2.5).result(timeout=60) == 2
        assert "cost_alert_threshold" not in capsys.readouterr().err
    finally:
        ex.shutdown()
    assert ex.cost >= HOURLY_1CPU_2GB / 60


def test_estimate_is_the_hand_computed_figure(emulator: Emulator) -> None:
    est = cloudburst.estimate(lambda x: nap(x, 0.02), range(1000), workers=10, cpu=2, sample=5, cold_start=45)
    assert est.sampled == 5 and 0.02 <= est.seconds_per_item < 0.2
    slots = 10 * 2  # cpu=2: two items at a time per worker
    running = -(-1000 // slots) * est.seconds_per_item  # 50 rounds
    hourly = 2 * 0.04048 + 4 * 0.004445  # 2 vCPU, 4 GB (2 GB per vCPU)
    assert est.seconds == pytest.approx(45 + running)
    assert est.cost == pytest.approx(10 * max(60.0, 45 + running) * hourly / 3600)
    assert "1,000 items" in str(est) and "$" in str(est)
    small = cloudburst.estimate(lambda x: x, range(3), workers=10)
    assert small.workers == 3  # no more workers than items
    with pytest.raises(cloudburst.ConfigurationError, match=r"valid memory for cpu=1"):
        cloudburst.estimate(lambda x: x, range(3), memory="64GB")
