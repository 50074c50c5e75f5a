"""The live-AWS suite's fixtures: a real account, set up once, under a hard cost cap, torn down at the end.

``backend`` and ``make_executor`` here override the suite's own, so test bodies written for the
emulator run unchanged against Fargate. Executors are handed over with a worker already up:
the bodies' waits (sized for the emulator) then measure the work, not Fargate's cold start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cloudburst

from ..conftest import LIVE_AWS_PROFILE, wait_until

MAX_COST_PER_JOB = 0.05  # USD: a job that costs more is stopped by cloudburst itself
COLD_START = 900.0  # seconds: the first worker of an account may wait for the image build and Fargate capacity
GONE = 120.0  # seconds: SQS lists a deleted queue for up to 60 s


@pytest.fixture(scope="session")
def live_aws() -> Iterator[dict[str, Any]]:
    """The account named by CLOUDBURST_TEST_AWS_PROFILE, set up for the session and torn down after it."""
    from cloudburst.backends.aws.setup import setup, teardown
    from cloudburst.config import userconfig

    profile = os.environ.get(LIVE_AWS_PROFILE)
    if not profile:
        pytest.skip(f"live AWS: set {LIVE_AWS_PROFILE} to run this suite")
    region = os.environ.get("CLOUDBURST_TEST_AWS_REGION") or None
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_PROFILE", profile)
        env.setenv("CLOUDBURST_PROFILE", profile)
        env.setenv("CLOUDBURST_MAX_COST_PER_JOB", str(MAX_COST_PER_JOB))
        if region:
            env.setenv("AWS_DEFAULT_REGION", region)
            env.setenv("CLOUDBURST_REGION", region)
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)  # the profile's credentials, never an emulator's
        try:
            setup(region=region, profile=profile, echo=print)
            yield dict(userconfig.load())
        finally:
            teardown(region=region, profile=profile, echo=print)


@pytest.fixture
def backend(live_aws: dict[str, Any]) -> str:
    return "fargate"


def assert_nothing_left_in_the_account(config: dict[str, Any], job_id: str) -> None:
    """No queue, object, key or running task of the job remains in the account."""
    from cloudburst.backends.aws.clients import client

    region, profile = config.get("region"), config.get("profile")
    sqs = client("sqs", region, profile)
    assert wait_until(
        lambda: not sqs.list_queues(QueueNamePrefix=f"cloudburst-{job_id[:20]}").get("QueueUrls"), timeout=GONE
    ), "queues left behind"
    s3 = client("s3", region, profile)
    assert not s3.list_objects_v2(Bucket=config["bucket"], Prefix=f"jobs/{job_id}/").get("Contents"), "objects left"
    ssm = client("ssm", region, profile)
    assert not ssm.get_parameters_by_path(Path=f"/cloudburst/jobs/{job_id}")["Parameters"], "job key left behind"
    ecs = client("ecs", region, profile)

    def running() -> list[str]:
        arns = ecs.list_tasks(cluster=config["cluster"], startedBy=f"cloudburst-{job_id[:24]}")["taskArns"]
        return [str(a) for a in arns]  # list_tasks lists RUNNING ones unless asked otherwise

    assert wait_until(lambda: not running(), timeout=300, interval=5), f"tasks still running: {running()}"


@pytest.fixture
def make_executor(live_aws: dict[str, Any]) -> Iterator[Callable[..., cloudburst.Executor]]:
    """Fargate executors whose first worker is up; afterwards nothing of theirs is left in the account."""
    made: list[cloudburst.Executor] = []

    def make(*args: Any, **kwargs: Any) -> cloudburst.Executor:
        kwargs.setdefault("backend", "fargate")
        ex = cloudburst.Executor(*args, **kwargs)
        made.append(ex)
        assert ex.submit(abs, -1).result(timeout=COLD_START) == 1  # a worker is up
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False, cancel_futures=True)
        ex.terminate()
        assert_nothing_left_in_the_account(live_aws, ex.job_id)


@pytest.fixture
def executor(make_executor: Callable[..., cloudburst.Executor]) -> cloudburst.Executor:
    return make_executor(2)
