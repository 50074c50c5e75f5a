"""Fargate vCPU quotas: fit the workers to what is free, refuse what cannot run, ask for more."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

import cloudburst
from cloudburst.emulator import Emulator
from cloudburst.emulator.server import QuotaStub

from .conftest import assert_nothing_left_in_aws


@pytest.fixture
def quota(emulator: Emulator) -> Iterator[QuotaStub]:
    saved = dict(emulator.quotas.values)
    yield emulator.quotas
    emulator.quotas.values.update(saved)
    emulator.quotas.requests.clear()


def square(x: int) -> int:
    return x * x


def test_quota_below_the_request_runs_in_waves_with_every_result(
    emulator: Emulator, quota: QuotaStub, capsys: pytest.CaptureFixture[str]
) -> None:
    quota.values[QuotaStub.ON_DEMAND] = 2
    ex = cloudburst.Executor(6, backend="fargate")
    try:
        assert list(ex.map(square, range(40), chunksize=2)) == [x * x for x in range(40)]
        assert len(ex._job.resources.launcher.task_ids()) <= 2
    finally:
        ex.shutdown()
    err = capsys.readouterr().err
    assert "asked for 6 workers × 1 vCPU; the Fargate On-Demand quota is 2 vCPUs (0 in use): running 2 workers" in err
    assert "about 3 waves" in err
    assert_nothing_left_in_aws(emulator, ex.job_id)


def test_quota_zero_is_a_clear_error_before_launch(emulator: Emulator, quota: QuotaStub) -> None:
    quota.values[QuotaStub.ON_DEMAND] = 0
    before = sum(emulator.calls.get(k, 0) for k in ("ecs.RunTask", "sqs.CreateQueue"))
    with pytest.raises(
        cloudburst.ConfigurationError, match=r"quota here is 0: not even one worker.*cloudburst quota --request"
    ):
        cloudburst.Executor(4, backend="fargate")
    assert sum(emulator.calls.get(k, 0) for k in ("ecs.RunTask", "sqs.CreateQueue")) == before


def test_on_quota_short_fail_refuses(emulator: Emulator, quota: QuotaStub, monkeypatch: pytest.MonkeyPatch) -> None:
    quota.values[QuotaStub.ON_DEMAND] = 2
    monkeypatch.setenv("CLOUDBURST_ON_QUOTA_SHORT", "fail")
    with pytest.raises(cloudburst.ConfigurationError, match=r"asked for 6 workers × 1 vCPU = 6 vCPUs, but the"):
        cloudburst.Executor(6, backend="fargate")


def test_increase_request_flow(emulator: Emulator, quota: QuotaStub, monkeypatch: pytest.MonkeyPatch) -> None:
    run = {"capture_output": True, "text": True, "check": False}
    asked = subprocess.run([sys.executable, "-m", "cloudburst.cli", "quota", "--request", "64"], **run)
    assert asked.returncode == 0, asked.stderr
    assert "asked AWS for 64 vCPUs (L-3032A538)" in asked.stdout and "pending: L-3032A538 → 64 vCPUs" in asked.stdout
    shown = json.loads(subprocess.run([sys.executable, "-m", "cloudburst.cli", "quota", "--json"], **run).stdout)
    assert shown["quotas"][0]["vcpus"] == 4000 and shown["pending_requests"][0]["DesiredValue"] == 64
    # With auto_quota_request, a short quota asks AWS once, sized with headroom.
    quota.requests.clear()
    quota.values[QuotaStub.ON_DEMAND] = 2
    monkeypatch.setenv("CLOUDBURST_AUTO_QUOTA_REQUEST", "true")
    ex = cloudburst.Executor(10, backend="fargate")
    ex.shutdown()
    assert [r["DesiredValue"] for r in quota.requests] == [12.0]  # 10 vCPUs wanted, 20% headroom


def test_vcpus_in_use_elsewhere_in_the_account_count(
    emulator: Emulator, quota: QuotaStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another cluster's Spot tasks show in the account's usage metric, not in the cloudburst cluster."""
    import datetime

    quota.values[QuotaStub.SPOT] = 8
    emulator.admin("cloudwatch").put_metric_data(  # another team's usage, not the cloudburst user's
        Namespace="AWS/Usage",
        MetricData=[
            {
                "MetricName": "ResourceCount",
                "Dimensions": [
                    {"Name": "Service", "Value": "Fargate"},
                    {"Name": "Type", "Value": "Resource"},
                    {"Name": "Resource", "Value": "vCPU"},
                    {"Name": "Class", "Value": "Standard/Spot"},
                ],
                "Timestamp": datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30),
                "Value": 6,
            }
        ],
    )
    ex = cloudburst.Executor(6, backend="fargate", spot=True)
    ex.shutdown()
    err = capsys.readouterr().err
    assert "the Fargate Spot quota is 8 vCPUs (6 in use): running 2 workers" in err
    shown = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "quota", "--json"], capture_output=True, text=True, check=True
    ).stdout
    spot = next(q for q in json.loads(shown)["quotas"] if q["quota"] == "Fargate Spot")
    assert (spot["in_use"], spot["counted"]) == (6, "the account (CloudWatch usage)")
