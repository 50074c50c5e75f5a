"""One-time set-up, persisted configuration, doctor and teardown, against emulated AWS.

Each test works in its own region of the session's emulated account (and its own config
directory), so it cannot disturb the us-east-1 set-up the other tests run on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

import cloudburst
from cloudburst.backends.aws import clients
from cloudburst.backends.aws.setup import Report, doctor, setup, teardown
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator

from .conftest import SETUP_REGIONS, fresh_region_fixture

region = fresh_region_fixture(SETUP_REGIONS)


def quiet(region: str, **kwargs: Any) -> Report:
    lines: list[str] = []
    report = setup(region=region, echo=lines.append, **kwargs)
    report.config["_lines"] = lines
    return report


def statuses(report: Report) -> dict[str, str]:
    return {s.name: s.status for s in report.steps}


def test_setup_from_scratch_makes_everything_and_saves_it(region: str) -> None:
    before = sum(clients.requests.values())
    report = quiet(region)
    calls = sum(clients.requests.values()) - before
    kinds = [s.name.split()[0] for s in report.steps if s.status == "made"]
    assert kinds == ["bucket", "ECR", "ECS", "log", "log", "network:", "role", "policy", "role", "configuration"]
    assert not report.problems
    assert calls < 60, f"a fresh setup made {calls} AWS calls"

    saved = userconfig.load()
    assert saved["bucket"] == f"cloudburst-123456789012-{region}" and saved["region"] == region
    assert saved["cluster"] == "cloudburst" and saved["subnets"] and saved["security_groups"]

    s3 = boto3.client("s3", region_name=region)
    bucket = saved["bucket"]
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert lifecycle["cloudburst-expire-job-data"]["Expiration"]["Days"] == 7
    assert (
        lifecycle["cloudburst-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    )

    ecs = boto3.client("ecs", region_name=region)
    cluster = ecs.describe_clusters(clusters=["cloudburst"])["clusters"][0]
    assert set(cluster["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}

    iam = boto3.client("iam", region_name=region)
    boundary = iam.get_policy(PolicyArn=saved["worker_boundary_arn"])["Policy"]
    policy = iam.get_policy_version(PolicyArn=boundary["Arn"], VersionId=boundary["DefaultVersionId"])["PolicyVersion"][
        "Document"
    ]

    def acts_on_data(statement: dict[str, Any]) -> bool:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        return any(a.split(":")[0] in ("s3", "sqs", "ssm", "logs") for a in actions)

    resources = [st["Resource"] for st in policy["Statement"] if acts_on_data(st)]
    assert "*" not in resources  # least privilege: no wildcard on data, queues, keys or logs
    assert f"arn:aws:s3:::{bucket}/jobs/*" in resources  # the most any job role may do: job data only

    ec2 = boto3.client("ec2", region_name=region)
    (group,) = ec2.describe_security_groups(GroupIds=saved["security_groups"])["SecurityGroups"]
    assert group["IpPermissions"] == []  # egress only
    logs = boto3.client("logs", region_name=region)
    (log_group,) = logs.describe_log_groups(logGroupNamePrefix="/cloudburst/workers")["logGroups"]
    assert log_group["retentionInDays"] == 30


def test_rerun_changes_nothing_and_says_so(region: str) -> None:
    quiet(region)
    config_before = userconfig.config_path().read_text()
    before = dict(clients.requests)
    again = quiet(region)
    writes = {
        op: n - before.get(op, 0)
        for op, n in clients.requests.items()
        if n > before.get(op, 0) and any(w in op for w in ("Create", "Put", "Update", "Delete"))
    }
    assert not writes, f"a re-run changed things: {writes}"
    assert not again.changed
    assert set(statuses(again).values()) <= {"found", "ok"}
    assert "Nothing changed: everything was already in place." in again.config["_lines"]
    assert userconfig.config_path().read_text() == config_before


def test_setup_reuses_what_is_already_there(region: str) -> None:
    boto3.client("ecs", region_name=region).create_cluster(
        clusterName="cloudburst", capacityProviders=["FARGATE", "FARGATE_SPOT"]
    )
    s3 = boto3.client("s3", region_name=region)
    s3.create_bucket(
        Bucket=f"cloudburst-123456789012-{region}", CreateBucketConfiguration={"LocationConstraint": region}
    )
    report = quiet(region)
    status = statuses(report)
    assert status["ECS cluster cloudburst"] == "found"
    # The bucket was there but not private, encrypted or tagged: repaired, not made again.
    assert status[f"bucket cloudburst-123456789012-{region}"] == "repaired"
    assert status[f"role cloudburst-execution-{region}"] == "made"


def test_setup_repairs_what_was_deleted_or_changed(region: str, emulator: Emulator) -> None:
    quiet(region)
    saved = userconfig.load()
    s3 = boto3.client("s3", region_name=region)
    s3.delete_public_access_block(Bucket=saved["bucket"])
    boto3.client("logs", region_name=region).delete_log_group(logGroupName="/cloudburst/workers")
    iam = boto3.client("iam", region_name=region)
    iam.delete_role_policy(RoleName=f"cloudburst-execution-{region}", PolicyName="cloudburst")
    ec2 = emulator.admin("ec2", region)  # someone opens the group: the user may not
    ec2.authorize_security_group_ingress(
        GroupId=saved["security_groups"][0], IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )

    problems = doctor(region=region, echo=lambda _: None).problems
    named = " | ".join(p.name for p in problems)
    assert "bucket" in named and "log group" in named and "role cloudburst-execution" in named
    assert "security group" in named
    assert all(p.fix for p in problems)

    report = quiet(region)
    status = statuses(report)
    assert status[f"bucket {saved['bucket']}"] == "repaired"
    assert status["log group /cloudburst/workers"] == "made"
    assert status[f"role cloudburst-execution-{region}"] == "repaired"
    assert status["security group cloudburst-workers"] == "repaired"
    assert ec2.describe_security_groups(GroupIds=saved["security_groups"])["SecurityGroups"][0]["IpPermissions"] == []
    assert not doctor(region=region, echo=lambda _: None).problems


def test_teardown_removes_only_what_setup_made(region: str, emulator: Emulator) -> None:
    quiet(region)
    s3 = emulator.admin("s3", region)  # someone else's resources: made by another identity
    s3.create_bucket(Bucket=f"someone-elses-{region}", CreateBucketConfiguration={"LocationConstraint": region})
    iam = emulator.admin("iam", region)
    iam.create_role(RoleName=f"cloudburst-lookalike-{region}", AssumeRolePolicyDocument="{}")
    iam.create_role(RoleName="cloudburst-job-crashed", Path="/cloudburst/jobs/", AssumeRolePolicyDocument="{}")
    nothing = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    iam.put_role_policy(
        RoleName="cloudburst-job-crashed", PolicyName="cloudburst-job", PolicyDocument=json.dumps(nothing)
    )
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    foreign_group = ec2.create_security_group(GroupName="theirs", Description="not ours", VpcId=vpc)["GroupId"]
    emulator.admin("logs", region).create_log_group(logGroupName="/cloudburst/not-tagged")
    saved = userconfig.load()
    s3.put_object(Bucket=saved["bucket"], Key="jobs/x/blob", Body=b"data")
    from cloudburst.backends.aws.images import store_index_credentials

    logins = store_index_credentials(region, None, "machine h login u password p\n")
    ssm = boto3.client("ssm", region_name=region)
    ssm.put_parameter(Name="/cloudburst/someone-elses", Value="x", Type="String")

    report = teardown(region=region, echo=lambda _: None)
    removed = {s.name.split()[0] for s in report.steps if s.status == "removed"}
    assert removed == {"bucket", "ECR", "ECS", "log", "security", "role", "job", "policy", "parameter"}
    names = {p["Name"] for p in ssm.describe_parameters()["Parameters"]}
    assert logins not in names and "/cloudburst/someone-elses" in names

    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert saved["bucket"] not in buckets and f"someone-elses-{region}" in buckets
    assert "cloudburst-123456789012-us-east-1" in buckets  # another region's set-up is untouched
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert f"cloudburst-execution-{region}" not in roles and f"cloudburst-lookalike-{region}" in roles
    assert "cloudburst-job-crashed" not in roles  # a job role a dead client left
    groups = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert foreign_group in groups and saved["security_groups"][0] not in groups
    assert (
        boto3.client("logs", region_name=region).describe_log_groups(logGroupNamePrefix="/cloudburst")["logGroups"][0][
            "logGroupName"
        ]
        == "/cloudburst/not-tagged"
    )
    assert "bucket" not in userconfig.load()
    assert teardown(region=region, echo=lambda _: None).steps == []  # nothing left to remove


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("workers", "-3", r"workers='-3' must be a whole number from 1"),
        ("workers", "2.5", r"must be a whole number"),
        ("memory", "2 gigs", r"unknown unit 'gigs'"),
        ("spot", "maybe", r"spot='maybe' must be true or false"),
        ("arch", "sparc", r"'x86_64' or 'arm64'"),
        ("on_quota_short", "panic", r"must be one of fit, fail"),
        ("wokers", "3", r"unknown setting 'wokers'"),
    ],
)
def test_invalid_config_values_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, match: str
) -> None:
    monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path))
    with pytest.raises(cloudburst.ConfigurationError, match=match):
        userconfig.set_value(key, value)
    assert not (tmp_path / "config.toml").exists()


def test_broken_config_file_names_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path))
    (tmp_path / "config.toml").write_text("[aws\nbucket = ")
    with pytest.raises(cloudburst.ConfigurationError, match=r"config.toml is not valid TOML.*cloudburst setup"):
        userconfig.load()
    (tmp_path / "config.toml").write_text('[defaults]\nworkers = "many"\n')
    with pytest.raises(cloudburst.ConfigurationError, match=r"workers='many' must be a whole number"):
        userconfig.load()


def test_precedence_call_then_env_then_file_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("CLOUDBURST_WORKERS", raising=False)
    assert userconfig.lookup("workers") == userconfig.Value("workers", 10, "default")
    userconfig.set_value("workers", "50")
    assert userconfig.lookup("workers").value == 50 and userconfig.lookup("workers").source.startswith("file")
    monkeypatch.setenv("CLOUDBURST_WORKERS", "70")
    assert userconfig.lookup("workers") == userconfig.Value("workers", 70, "env CLOUDBURST_WORKERS")
    assert userconfig.lookup("workers", {"workers": 90}) == userconfig.Value("workers", 90, "call")


def test_cli_config_shows_sources_and_doctor_exits_nonzero_on_problems(region: str) -> None:
    env_run: dict[str, Any] = {"capture_output": True, "text": True, "check": False}
    out = subprocess.run([sys.executable, "-m", "cloudburst.cli", "config", "set", "workers", "40"], **env_run)
    assert out.returncode == 0, out.stderr
    shown = subprocess.run([sys.executable, "-m", "cloudburst.cli", "config", "--json"], **env_run)
    values = json.loads(shown.stdout)
    assert values["workers"]["value"] == 40 and values["workers"]["source"].startswith("file")
    bad = subprocess.run([sys.executable, "-m", "cloudburst.cli", "config", "set", "cpu", "0"], **env_run)
    assert bad.returncode != 0 and "cpu='0' is not a Fargate worker size; use one of 0.25" in bad.stderr
    checked = subprocess.run([sys.executable, "-m", "cloudburst.cli", "doctor", "--region", region], **env_run)
    assert checked.returncode == 1 and "run `cloudburst setup`" in checked.stdout
