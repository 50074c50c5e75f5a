"""Each job's own IAM role: made with the job, naming only that job's resources, passed to its workers
(Fargate tasks and local workers alike), and gone with the job: closed, collected, or cleaned up after a
client that died."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import boto3
import pytest

import cloudburst
from cloudburst.emulator import Emulator, FaultRule

from .conftest import wait_until


def _role_name(job_id: str) -> str:
    return f"cloudburst-job-{job_id}"


def _role_exists(job_id: str) -> bool:
    try:
        boto3.client("iam").get_role(RoleName=_role_name(job_id))
    except boto3.client("iam").exceptions.NoSuchEntityException:
        return False
    return True


def _resources(document: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for statement in document["Statement"]:
        value = statement["Resource"]
        found += [value] if isinstance(value, str) else value
    return found


def whoami(_: object = None) -> dict[str, str]:
    """Which identity a worker's boto3 finds, and where from."""
    session = boto3.Session()
    credentials = session.get_credentials()
    arn = session.client("sts").get_caller_identity()["Arn"]
    return {"method": credentials.method if credentials else "", "arn": arn}


def test_each_job_runs_under_its_own_role_which_goes_with_it(emulator: Emulator) -> None:
    iam = boto3.client("iam")
    before = emulator.calls
    with cloudburst.Executor(1, backend="fargate") as ex:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        job_id = ex.job_id
        role = iam.get_role(RoleName=_role_name(job_id))["Role"]
        assert role["Path"] == "/cloudburst/jobs/"
        assert (
            role["PermissionsBoundary"]["PermissionsBoundaryArn"]
            == emulator.resources["CLOUDBURST_WORKER_BOUNDARY_ARN"]
        )
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]}
        assert tags["cloudburst:job"] == job_id
        policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="cloudburst-job")["PolicyDocument"]
        for resource in _resources(policy):
            # every resource names this job (its prefix, queues, key), or is the bucket with a prefix condition
            assert job_id in resource or job_id[:20] in resource or resource.endswith(":::" + ex_bucket(emulator)), (
                resource
            )
        assert "*" not in _resources(policy)
        (task_id,) = ex._job.resources.launcher.task_ids()
        (task,) = boto3.client("ecs").describe_tasks(cluster="cloudburst", tasks=[task_id])["tasks"]
        assert task["overrides"]["taskRoleArn"] == role["Arn"]
    assert not _role_exists(job_id)
    added = {
        op: n - before.get(op, 0) for op, n in emulator.calls.items() if op.startswith("iam.") and n > before.get(op, 0)
    }
    for own in ("iam.GetRole", "iam.GetRolePolicy", "iam.ListRoleTags"):  # this test's own look-ups
        added.pop(own, None)
    # the cost of a role per job, in calls: made with two, deleted with three
    assert added == {
        "iam.CreateRole": 1,
        "iam.PutRolePolicy": 1,
        "iam.ListRolePolicies": 1,
        "iam.DeleteRolePolicy": 1,
        "iam.DeleteRole": 1,
    }, added


def ex_bucket(emulator: Emulator) -> str:
    return emulator.resources["CLOUDBURST_BUCKET"]


def test_a_job_that_cannot_make_its_role_leaves_nothing_behind(emulator: Emulator) -> None:
    emulator.fail("iam", "PutRolePolicy", code="LimitExceeded", status=409, times=1)
    sqs = boto3.client("sqs")
    queues_before = set(sqs.list_queues(QueueNamePrefix="cloudburst-").get("QueueUrls", []))
    iam = boto3.client("iam")
    roles_before = {r["RoleName"] for r in iam.list_roles(PathPrefix="/cloudburst/jobs/")["Roles"]}  # kept jobs
    with pytest.raises(cloudburst.CloudError, match="PutRolePolicy"), cloudburst.Executor(1, backend="fargate") as ex:
        ex.submit(abs, -1).result(timeout=60)
    emulator.clear_faults()
    roles = {r["RoleName"] for r in iam.list_roles(PathPrefix="/cloudburst/jobs/")["Roles"]}
    assert roles <= roles_before, roles - roles_before
    assert set(sqs.list_queues(QueueNamePrefix="cloudburst-").get("QueueUrls", [])) <= queues_before


def test_workers_start_once_iam_knows_the_new_role(emulator: Emulator) -> None:
    # Right after CreateRole, ECS may not yet be able to take the role: RunTask says so, and is tried again.
    rule = emulator.add_fault(
        FaultRule(
            "ecs",
            "RunTask",
            code="InvalidParameterException",
            message="ECS was unable to assume the role 'arn:aws:iam::123456789012:role/x' that was provided for "
            "this task. Please verify that the role being passed has the proper trust relationship and IAM "
            "permissions",
            times=2,
        )
    )
    try:
        with cloudburst.Executor(1, backend="fargate") as ex:
            assert ex.submit(abs, -5).result(timeout=90) == 5
    finally:
        emulator.clear_faults()
    assert rule.hits == 2


def test_local_workers_run_as_the_job_role_and_nothing_else(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert emulator.agent is not None
    emulator.agent.cold_start = 60.0  # the local worker takes the task while the Fargate one starts
    # The client's own keys (the emulator's, in its environment) come before any other source in botocore's
    # chain: a worker that finds the job role's container credentials was not given them.
    assert os.environ.get("AWS_ACCESS_KEY_ID")
    try:
        with cloudburst.Executor(1, backend="fargate", local_workers=1) as ex:
            found = ex.submit(whoami).result(timeout=60)
            job_id = ex.job_id
    finally:
        emulator.agent.cold_start = 0.0
    assert found["method"] == "container-role", found
    assert f":assumed-role/{_role_name(job_id)}/" in found["arn"], found
    assert not _role_exists(job_id)


def test_a_detached_jobs_role_lives_until_the_job_is_collected(emulator: Emulator) -> None:
    job_id = cloudburst.submit_job(abs, [-1, -2], backend="fargate", workers=1)
    assert _role_exists(job_id)
    job = cloudburst.attach(job_id)
    assert job.results(timeout=120) == [1, 2]
    assert wait_until(lambda: not _role_exists(job_id), timeout=30)


def test_cleanup_removes_the_role_of_a_client_that_died(emulator: Emulator) -> None:
    ex = cloudburst.Executor(1, backend="fargate", keep=True, client_timeout=10)
    assert ex.submit(abs, -1).result(timeout=60) == 1
    job_id = ex.job_id
    ex.shutdown()  # keep=True: as a killed client, it leaves its queues, key and role behind
    assert _role_exists(job_id)
    time.sleep(0.1)
    cleaned = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "cleanup", "--yes", "--older-than", "0", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"role {_role_name(job_id)}" in json.loads(cleaned.stdout)[job_id]
    assert not _role_exists(job_id)


def test_the_credentials_endpoint_answers_only_its_token_and_refreshes_before_expiry() -> None:
    import urllib.error
    import urllib.request
    from datetime import datetime, timedelta, timezone

    from cloudburst.backends.aws.credentials import CredentialsEndpoint

    fetched: list[int] = []

    def fetch() -> dict[str, Any]:
        fetched.append(1)
        soon = datetime.now(timezone.utc) + timedelta(minutes=5 if len(fetched) == 1 else 60)
        return {"AccessKeyId": f"AKID{len(fetched)}", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": soon}

    endpoint = CredentialsEndpoint(fetch)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(endpoint.url, headers={"Authorization": "guess"}), timeout=5)
        assert refused.value.code == 401 and not fetched  # no token, nothing fetched or shown

        def ask() -> dict[str, str]:
            request = urllib.request.Request(endpoint.url, headers={"Authorization": endpoint.token})
            with urllib.request.urlopen(request, timeout=5) as answer:
                return dict(json.loads(answer.read()))

        assert ask()["AccessKeyId"] == "AKID1"
        # the first credentials expire within the refresh margin: the next request gets new ones
        assert ask()["AccessKeyId"] == "AKID2"
        assert ask()["AccessKeyId"] == "AKID2" and len(fetched) == 2
    finally:
        endpoint.close()
