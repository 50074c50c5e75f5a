"""Least privilege around the workers: roles trusted only by this account's services, checked whole by
setup and doctor, and granting the workers only what the worker loop uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cloudburst.backends.aws.policies import Names, same_document, service_trust, worker_policy
from cloudburst.backends.aws.setup import Report, doctor, setup
from cloudburst.emulator import Emulator

REGION = "sa-east-1"  # no other test of the session sets up here


@pytest.fixture(scope="module")
def set_up(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One set-up in a region of its own, with its own config directory."""
    config = tmp_path_factory.mktemp("isolation-config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDBURST_CONFIG_DIR", str(config))
        setup(region=REGION, echo=lambda line: None)
        yield REGION


def _iam() -> Any:
    return boto3.client("iam", region_name=REGION)


def _account() -> str:
    return str(boto3.client("sts", region_name=REGION).get_caller_identity()["Account"])


def _doctor() -> Report:
    return doctor(region=REGION, echo=lambda line: None)


def _problem(report: Report, role: str) -> str:
    return next((f"{s.detail} / {s.fix}" for s in report.problems if s.name == f"role {role}"), "")


@pytest.mark.parametrize(
    ("trust", "what"),
    [
        ({"Service": "ec2.amazonaws.com"}, "another service"),
        ({"AWS": "arn:aws:iam::999999999999:root"}, "a foreign account"),
    ],
    ids=["ec2", "foreign-account"],
)
def test_a_role_trusting_anyone_else_is_flagged_and_repaired(set_up: str, trust: dict[str, str], what: str) -> None:
    role = f"cloudburst-execution-{set_up}"
    wrong = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": trust, "Action": "sts:AssumeRole"}],
    }
    _iam().update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(wrong))
    assert "trust policy" in _problem(_doctor(), role), f"doctor missed {what}"
    setup(region=set_up, echo=lambda line: None)
    found = _iam().get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert same_document(found, service_trust(Names(_account(), set_up), "ecs-tasks.amazonaws.com"))
    assert not _problem(_doctor(), role)


def test_a_correct_role_is_left_alone(set_up: str) -> None:
    lines: list[str] = []
    setup(region=set_up, echo=lines.append)
    assert not [line for line in lines if line.startswith("~ role")], lines
    assert not _doctor().problems


def test_grants_added_to_a_role_are_flagged_and_removed(set_up: str, emulator: Emulator) -> None:
    role = f"cloudburst-execution-{set_up}"
    iam = emulator.admin("iam", set_up)  # someone widens the role: the user may not
    admin = iam.create_policy(
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=admin)
    iam.put_role_policy(
        RoleName=role,
        PolicyName="extra",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    problem = _problem(_doctor(), role)
    assert "attached policy everything" in problem and "inline policy extra" in problem, problem
    setup(region=set_up, echo=lambda line: None)
    assert not iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["cloudburst"]


def test_trust_policies_name_this_account_and_its_resources(set_up: str) -> None:
    account = _account()
    for kind, arn_prefix in (("execution", "arn:aws:ecs:"), ("build", "arn:aws:codebuild:")):
        document = _iam().get_role(RoleName=f"cloudburst-{kind}-{set_up}")["Role"]["AssumeRolePolicyDocument"]
        (statement,) = document["Statement"]
        # moto does not evaluate trust conditions: the document is checked as written.
        assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": account}, kind
        assert statement["Condition"]["ArnLike"]["aws:SourceArn"].startswith(f"{arn_prefix}{set_up}:{account}:"), kind


def _worker_policy(debug: bool) -> dict[str, Any]:
    return worker_policy(
        Names("123456789012", "us-east-1"),
        job_id="a" * 32,
        tasks_queue="cloudburst-aaaa-tasks",
        results_queue="cloudburst-aaaa-results",
        key_parameter="/cloudburst/jobs/" + "a" * 32 + "/key",
        debug=debug,
    )


def test_the_workers_are_granted_only_what_the_worker_loop_uses() -> None:
    actions = {a for s in _worker_policy(False)["Statement"] for a in _list(s["Action"])}
    assert not {"s3:DeleteObject", "sqs:GetQueueAttributes", "logs:CreateLogStream", "logs:PutLogEvents"} & actions
    assert {"s3:GetObject", "s3:PutObject", "sqs:ReceiveMessage", "sqs:SendMessage", "ssm:GetParameter"} <= actions
    assert not [a for a in actions if a.startswith("ssmmessages:")], "ECS Exec is for debug jobs only"
    debug_actions = {a for s in _worker_policy(True)["Statement"] for a in _list(s["Action"])}
    assert "ssmmessages:OpenDataChannel" in debug_actions


def test_documents_compare_whole() -> None:
    wanted = service_trust(Names("123456789012", "us-east-1"), "ecs-tasks.amazonaws.com")
    reordered = json.loads(json.dumps(wanted))
    assert same_document(reordered, wanted)
    widened = json.loads(json.dumps(wanted))
    widened["Statement"].append({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "*"})
    assert not same_document(widened, wanted)
    loosened = json.loads(json.dumps(wanted))
    del loosened["Statement"][0]["Condition"]
    assert not same_document(loosened, wanted)


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_the_bucket_keeps_objects_its_own_and_expires_builds_and_bundles(set_up: str) -> None:
    s3 = boto3.client("s3", region_name=set_up)
    bucket = f"cloudburst-{_account()}-{set_up}"
    rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    expiring = {
        r["Filter"]["Prefix"]: r["Expiration"]["Days"]
        for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        if "Expiration" in r
    }
    assert expiring == {"jobs/": 7, "builds/": 7, "envs/": 30, "cache/": 30}


def test_image_build_logs_have_a_retention(set_up: str) -> None:
    logs = boto3.client("logs", region_name=set_up)
    groups = logs.describe_log_groups(logGroupNamePrefix="/aws/codebuild/cloudburst-")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [
        ("/aws/codebuild/cloudburst-image-builder", 30)
    ]
