"""The emulator enforces IAM: the client is a user holding exactly user_policy(), each worker holds only
its own job's role, and one job's worker can do nothing to another job.

What the emulator does not evaluate (emulator/access.py) is checked here by reading the document:
the bucket policy, and the trust policies' aws:SourceAccount / aws:SourceArn conditions on API calls
(the emulated agent evaluates them only when it takes a role as ECS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

import cloudburst
from cloudburst.backends.aws.policies import Names, boundary_policy
from cloudburst.backends.aws.user_policies import setup_policy, user_policy
from cloudburst.cli import main
from cloudburst.emulator import Emulator
from cloudburst.emulator.identities import ACCOUNT, USER_NAME

from .conftest import wait_until

DENIED = {"AccessDenied", "AccessDeniedException"}


def _code(call: Callable[[], Any]) -> str:
    """'ok', or the error code AWS answered."""
    try:
        call()
    except Exception as exc:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__)
    return "ok"


# ------------------------------------------------------------------------------------------ the client
def test_the_emulator_accepts_only_its_own_per_run_key(emulator: Emulator) -> None:
    def client(service: str, key: str, secret: str) -> Any:
        return boto3.client(service, aws_access_key_id=key, aws_secret_access_key=secret)

    for key, secret in (("emulated", "emulated"), ("AKIA" + uuid.uuid4().hex[:16].upper(), "x" * 40)):
        sts, sqs, s3 = (client(service, key, secret) for service in ("sts", "sqs", "s3"))
        assert _code(sts.get_caller_identity) == "InvalidClientTokenId"
        assert _code(sqs.list_queues) == "InvalidClientTokenId"
        assert _code(s3.list_buckets) == "InvalidAccessKeyId"
    own = emulator.credentials["AWS_ACCESS_KEY_ID"]
    assert own.startswith("AKIA") and len(emulator.credentials["AWS_SECRET_ACCESS_KEY"]) == 40, "made for this run"
    # the right key with the wrong secret is no better
    wrong = client("sqs", own, "y" * 40)
    assert _code(lambda: wrong.list_queues()) == "SignatureDoesNotMatch"


def test_the_client_is_a_user_holding_exactly_the_user_policy(emulator: Emulator) -> None:
    from moto.iam.models import iam_backends

    identity = boto3.client("sts").get_caller_identity()["Arn"]
    assert identity == f"arn:aws:iam::{ACCOUNT}:user/{USER_NAME}"
    user = iam_backends[ACCOUNT]["aws"].get_user(USER_NAME)
    assert not user.managed_policies
    held = {name: json.loads(document) for name, document in user.policies.items()}
    wanted = {f"cloudburst-{r}": user_policy(Names(ACCOUNT, r)) for r in emulator.user_regions}
    wanted.update({f"cloudburst-setup-{r}": setup_policy(Names(ACCOUNT, r)) for r in emulator.user_regions})
    assert held == wanted
    for flag, name in (("--print-user-policy", "cloudburst"), ("--print-setup-policy", "cloudburst-setup")):
        printed = CliRunner().invoke(main, ["setup", flag, "--region", emulator.region])
        assert printed.exit_code == 0, printed.output
        assert json.loads(printed.output) == held[f"{name}-{emulator.region}"]


RUNNER = """
import json, subprocess, sys
import cloudburst
assert cloudburst.map(abs, [-1, -2, -3], backend="fargate", workers=1) == [1, 2, 3]
job = cloudburst.submit_job(abs, [-4], backend="fargate", workers=1)
assert cloudburst.attach(job).results(timeout=120) == [4]
for command in (["status", "--json"], ["doctor"], ["cleanup", "--yes", "--json"]):
    done = subprocess.run([sys.executable, "-m", "cloudburst.cli", *command], capture_output=True, text=True)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
print("ran")
"""


def test_the_user_policy_alone_runs_jobs_and_widens_nothing(emulator: Emulator, tmp_path: Path) -> None:
    """Someone who did not set cloudburst up, holding only the user policy: jobs, detached jobs, status,
    doctor and cleanup work; changing a service role, the boundary, or making a role outside the job path
    (each a way to give workers more than the boundary allows) is denied."""
    runner = emulator.runner()
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    done = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, **runner}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ran" in done.stdout, done.stdout + done.stderr[-3000:]

    iam = boto3.client(
        "iam", aws_access_key_id=runner["AWS_ACCESS_KEY_ID"], aws_secret_access_key=runner["AWS_SECRET_ACCESS_KEY"]
    )
    names = Names(ACCOUNT, emulator.region)
    everything = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    )
    execution = f"cloudburst-execution-{emulator.region}"
    attempts = {
        "widen the execution role": lambda: iam.put_role_policy(
            RoleName=execution, PolicyName="more", PolicyDocument=everything
        ),
        "widen the boundary": lambda: iam.create_policy_version(
            PolicyArn=names.boundary_arn, PolicyDocument=everything, SetAsDefault=True
        ),
        "make a service-looking role": lambda: iam.create_role(
            RoleName=f"cloudburst-evil-{emulator.region}", AssumeRolePolicyDocument="{}"
        ),
        "drop a job role's boundary": lambda: iam.delete_role_permissions_boundary(RoleName="cloudburst-job-x"),
    }
    allowed = [what for what, attempt in attempts.items() if _code(attempt) not in DENIED]
    assert not allowed, allowed


def test_a_grant_outside_the_user_policy_is_denied(emulator: Emulator) -> None:
    """The user policy is enforced: it names cloudburst's resources, nothing else."""
    assert _code(lambda: boto3.client("sqs").create_queue(QueueName="someone-elses")) in DENIED
    assert _code(lambda: boto3.client("iam").create_role(RoleName="admin", AssumeRolePolicyDocument="{}")) in DENIED
    job_role = {"RoleName": "cloudburst-job-x", "Path": "/cloudburst/jobs/", "AssumeRolePolicyDocument": "{}"}
    assert _code(lambda: boto3.client("iam").create_role(**job_role)) in DENIED, "a job role needs the boundary"


def test_the_agent_runs_only_task_definitions_its_client_registered(emulator: Emulator) -> None:
    from moto.ecs.models import ecs_backends

    backend = ecs_backends[ACCOUNT][emulator.region]
    container = {"name": "worker", "image": "python", "memory": 512, "command": ["python", "-c", "print(1)"]}
    foreign = backend.register_task_definition(  # made by someone else, not through the client
        "cloudburst-foreign", [container], cpu="256", memory="512", requires_compatibilities=["FARGATE"]
    )
    ecs = boto3.client("ecs")
    cluster = emulator.resources["CLOUDBURST_CLUSTER"]
    subnets, groups = emulator.resources["CLOUDBURST_SUBNETS"], emulator.resources["CLOUDBURST_SECURITY_GROUPS"]
    network = {"awsvpcConfiguration": {"subnets": subnets.split(","), "securityGroups": groups.split(",")}}
    arn = ecs.run_task(cluster=cluster, taskDefinition=foreign.arn, launchType="FARGATE", networkConfiguration=network)[
        "tasks"
    ][0]["taskArn"]

    def stopped() -> dict[str, Any] | None:
        task = ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]
        return task if task["lastStatus"] == "STOPPED" else None

    assert wait_until(lambda: stopped() is not None, timeout=30)
    task = stopped()
    assert task is not None and task["stopCode"] == "TaskFailedToStart"
    assert "not registered by this emulator's client" in task["stoppedReason"]
    assert arn.rsplit("/", 1)[-1] not in emulator.worker_pids(), "no process was started for it"


# ------------------------------------------------------------------------------------ one job, another
def _probe(target: dict[str, str]) -> dict[str, str]:
    """Runs in job B's worker, with its own credentials: try job A's resources and AWS-wide actions."""
    import boto3 as b3

    def code(call: Callable[[], Any]) -> str:
        try:
            call()
        except Exception as exc:
            return str(getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__)
        return "ok"

    s3, sqs, ssm = b3.client("s3"), b3.client("sqs"), b3.client("ssm")
    ecr, ecs, iam = b3.client("ecr"), b3.client("ecs"), b3.client("iam")
    bucket, a = target["bucket"], f"jobs/{target['job']}/"
    return {
        "list jobs/": code(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="jobs/")),
        "list A's objects": code(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=a)),
        "get A's object": code(lambda: s3.get_object(Bucket=bucket, Key=f"{a}planted")),
        "put A's object": code(lambda: s3.put_object(Bucket=bucket, Key=f"{a}planted", Body=b"x")),
        "put A's control record": code(lambda: s3.put_object(Bucket=bucket, Key=f"{a}control/state", Body=b"x")),
        "send to A's results": code(lambda: sqs.send_message(QueueUrl=target["results"], MessageBody="x")),
        "take A's tasks": code(lambda: sqs.receive_message(QueueUrl=target["tasks"], WaitTimeSeconds=0)),
        "read A's key": code(lambda: ssm.get_parameter(Name=target["key"], WithDecryption=True)),
        "another project's bundle": code(lambda: s3.get_object(Bucket=bucket, Key=target["bundle"])),
        "ecr:InitiateLayerUpload": code(lambda: ecr.initiate_layer_upload(repositoryName="cloudburst")),
        "ecr:PutImage": code(lambda: ecr.put_image(repositoryName="cloudburst", imageManifest="{}", imageTag="x")),
        "ecs:RunTask (and iam:PassRole of its role)": code(
            lambda: ecs.run_task(
                cluster=target["cluster"],
                taskDefinition=target["definition"],
                overrides={"taskRoleArn": target["role"]},
            )
        ),
        "iam:CreateRole": code(
            lambda: iam.create_role(
                RoleName="cloudburst-job-escalated",
                Path="/cloudburst/jobs/",
                AssumeRolePolicyDocument="{}",
                PermissionsBoundary=target["boundary"],
            )
        ),
        "iam:PutRolePolicy (its own role)": code(
            lambda: iam.put_role_policy(RoleName=target["own_role"], PolicyName="more", PolicyDocument="{}")
        ),
    }


def _poc_chain(target: dict[str, str]) -> list[tuple[str, str]]:
    """The issue's attack, from job B's worker: list jobs/ to learn A's id, read A's key, forge a result."""
    import boto3 as b3

    s3, ssm = b3.client("s3"), b3.client("ssm")
    steps: list[tuple[str, str]] = []
    try:
        listed = s3.list_objects_v2(Bucket=target["bucket"], Prefix="jobs/", Delimiter="/")
        steps.append(("list jobs/", "ok"))
        ids = [p["Prefix"].split("/")[1] for p in listed.get("CommonPrefixes", [])]
        victim = next(i for i in ids if i != target["own_job"])
        ssm.get_parameter(Name=f"/cloudburst/jobs/{victim}/key", WithDecryption=True)
        steps.append(("read the key", "ok"))
    except Exception as exc:
        steps.append(("failed", str(getattr(exc, "response", {}).get("Error", {}).get("Code") or exc)))
    return steps


@pytest.fixture
def job_a(emulator: Emulator) -> Iterator[cloudburst.Executor]:
    """Job A, open (its workers running) for the whole test."""
    with cloudburst.Executor(1, backend="fargate") as ex:
        assert ex.submit(int, "1").result(timeout=120) == 1
        yield ex


def _target(emulator: Emulator, a: cloudburst.Executor, b: cloudburst.Executor) -> dict[str, str]:
    backend_a, backend_b = a._job.backend, b._job.backend
    bucket = emulator.resources["CLOUDBURST_BUCKET"]
    boto3.client("s3").put_object(Bucket=bucket, Key=f"jobs/{a.job_id}/planted", Body=b"A's data")
    bundle = f"envs/another-project-{uuid.uuid4().hex[:8]}.tar.zst"
    boto3.client("s3").put_object(Bucket=bucket, Key=bundle, Body=b"another project's wheels")
    names = Names(ACCOUNT, emulator.region)
    return {
        "bucket": bucket,
        "job": a.job_id,
        "own_job": b.job_id,
        "tasks": backend_a._queues.tasks,  # type: ignore[attr-defined]
        "results": backend_a._queues.results,  # type: ignore[attr-defined]
        "key": backend_a._key_parameter,  # type: ignore[attr-defined]
        "bundle": bundle,
        "cluster": emulator.resources["CLOUDBURST_CLUSTER"],
        "definition": b._job.resources.launcher.task_definition,  # type: ignore[attr-defined]
        "role": backend_a._role.arn,  # type: ignore[attr-defined]
        "own_role": backend_b._role.name,  # type: ignore[attr-defined]
        "boundary": names.boundary_arn,
    }


def test_a_jobs_worker_can_do_nothing_to_another_job(emulator: Emulator, job_a: cloudburst.Executor) -> None:
    with cloudburst.Executor(1, backend="fargate") as b:
        target = _target(emulator, job_a, b)
        found = b.submit(_probe, target).result(timeout=120)  # B's own work done: its result arrived
    allowed = {what: code for what, code in found.items() if code not in DENIED}
    assert not allowed, f"job B's worker was not denied: {allowed}"


def test_the_attack_chain_of_the_issue_fails_at_its_first_step(emulator: Emulator, job_a: cloudburst.Executor) -> None:
    with cloudburst.Executor(1, backend="fargate") as b:
        steps = b.submit(_poc_chain, _target(emulator, job_a, b)).result(timeout=120)
    assert steps[0][0] == "failed" and steps[0][1] in DENIED, steps


def test_the_probes_would_have_caught_one_shared_role(emulator: Emulator, job_a: cloudburst.Executor) -> None:
    """The check of the checks: B's role given the reach of the one shared task role of old (every job's
    objects, queues, keys and bundles: what the boundary allows) lets B's worker at A's data."""
    from moto.iam.models import iam_backends

    with cloudburst.Executor(1, backend="fargate") as b:
        target = _target(emulator, job_a, b)
        role = iam_backends[ACCOUNT]["aws"].get_role(target["own_role"])
        role.policies["cloudburst-job"] = json.dumps(boundary_policy(Names(ACCOUNT, emulator.region)))
        found = b.submit(_probe, target).result(timeout=120)
        steps = b.submit(_poc_chain, target).result(timeout=120)
    data = ["list jobs/", "get A's object", "send to A's results", "read A's key", "another project's bundle"]
    assert {what: found[what] for what in data} == dict.fromkeys(data, "ok")
    assert steps == [("list jobs/", "ok"), ("read the key", "ok")]


# ----------------------------------------------------------------- what the emulator does not evaluate
def test_trust_conditions_not_evaluated_on_api_calls_are_in_the_documents(emulator: Emulator) -> None:
    """aws:SourceAccount / aws:SourceArn: the agent evaluates them when it takes a role as ECS; here the
    job role's document is read."""
    with cloudburst.Executor(1, backend="fargate") as ex:
        ex.submit(int, "2").result(timeout=120)
        name = ex._job.backend._role.name  # type: ignore[attr-defined]
        document = boto3.client("iam").get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    ecs = next(s for s in document["Statement"] if s["Principal"] == {"Service": "ecs-tasks.amazonaws.com"})
    assert ecs["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert ecs["Condition"]["ArnLike"]["aws:SourceArn"].startswith(f"arn:aws:ecs:{emulator.region}:{ACCOUNT}:")
