"""A customer-managed KMS key for job keys and the bucket, offered by ``cloudburst setup --kms-key``.

Against emulated AWS (moto's KMS). moto does not evaluate ``kms:ViaService`` or any other condition, and
does not check KMS permissions when SSM or S3 use a key: the grants are checked by reading the documents.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

import cloudburst
from cloudburst.backends.aws.policies import Names, boundary_policy, build_policy, worker_policy
from cloudburst.backends.aws.setup import Report, doctor, setup, teardown
from cloudburst.cli import main
from cloudburst.config import userconfig
from cloudburst.emulator import EMULATED_IMAGE
from cloudburst.errors import CloudError

from .conftest import KMS_REGIONS, fresh_region_fixture

ACCOUNT = "123456789012"  # the emulated account
region = fresh_region_fixture(KMS_REGIONS)


def quiet(region: str, **kwargs: Any) -> Report:
    return setup(region=region, echo=lambda line: None, **kwargs)


def kms(region: str) -> Any:
    """KMS as another identity of the account: to inspect keys, or to make one that a user then brings."""
    from .conftest import _EMULATORS

    return _EMULATORS[0].admin("kms", region)


def yours(region: str, make: Callable[[Any], str]) -> str:
    """A key someone made (``make``), which the cloudburst user brings: granted to the user as the README
    says one must (the user policy reaches only setup's own key)."""
    from .conftest import _EMULATORS

    key = make(kms(region))
    if key.startswith("alias/no-"):
        return key  # no such key: nothing to grant
    arn = kms(region).describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    use = ["kms:DescribeKey", "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:ListResourceTags"]
    grant = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": use, "Resource": arn}]}
    _EMULATORS[0].admin("iam").put_user_policy(
        UserName="cloudburst-user", PolicyName=f"my-key-{region}", PolicyDocument=json.dumps(grant)
    )
    return key


def key_statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if any(str(a).startswith("kms:") for a in _list(s["Action"]))]


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def bucket_rule(region: str) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=region)
    rules = s3.get_bucket_encryption(Bucket=f"cloudburst-{ACCOUNT}-{region}")["ServerSideEncryptionConfiguration"]
    (rule,) = rules["Rules"]
    return dict(rule)


def role_policy(region: str, role: str) -> dict[str, Any]:
    return dict(boto3.client("iam").get_role_policy(RoleName=role, PolicyName="cloudburst")["PolicyDocument"])


def boundary(region: str) -> dict[str, Any]:
    iam = boto3.client("iam")
    arn = f"arn:aws:iam::{ACCOUNT}:policy/cloudburst-worker-boundary-{region}"
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    return dict(iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"])


# ---------------------------------------------------------------------------- making a key, and keeping it


def test_setup_creates_a_rotating_tagged_key_with_its_alias_and_keeps_it(region: str) -> None:
    arn = quiet(region, kms_key="create").config["kms_key"]
    assert userconfig.load()["kms_key"] == arn
    client = kms(region)
    metadata = client.describe_key(KeyId=f"alias/cloudburst-{region}")["KeyMetadata"]
    assert metadata["Arn"] == arn and metadata["KeyState"] == "Enabled" and metadata["KeyManager"] == "CUSTOMER"
    assert metadata["KeySpec"] == "SYMMETRIC_DEFAULT" and metadata["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert client.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"]
    assert {"TagKey": "cloudburst", "TagValue": "true"} in client.list_resource_tags(KeyId=arn)["Tags"]
    policy = json.loads(client.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
    assert policy["Statement"] == [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    keys = len(client.list_keys()["Keys"])

    lines: list[str] = []
    setup(region=region, echo=lines.append)  # no --kms-key: the configured key stays
    assert userconfig.load()["kms_key"] == arn
    assert "Nothing changed" in lines[-1], lines
    quiet(region, kms_key="create")  # again: the key found by its alias, none made
    assert len(client.list_keys()["Keys"]) == keys and userconfig.load()["kms_key"] == arn
    assert not [s for s in doctor(region=region, echo=lambda line: None).problems if "CodeBuild" not in s.detail]


def test_bucket_uses_the_key_with_bucket_keys_is_checked_and_goes_back_to_sse_s3(region: str) -> None:
    arn = quiet(region, kms_key="create").config["kms_key"]
    rule = bucket_rule(region)
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": arn}
    assert rule["BucketKeyEnabled"] is True

    bucket = f"cloudburst-{ACCOUNT}-{region}"
    boto3.client("s3", region_name=region).put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    problem = next(s for s in doctor(region=region, echo=lambda line: None).problems if s.name == f"bucket {bucket}")
    assert f"encryption SSE-KMS with {arn}, S3 Bucket Key on" in problem.detail
    quiet(region)
    assert bucket_rule(region)["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == arn

    quiet(region, kms_key="default")  # back to AWS-managed keys
    assert bucket_rule(region)["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert "kms_key" not in userconfig.load()
    assert not key_statements(boundary(region))


def test_a_key_of_your_own_is_used_by_its_alias_from_the_command_line(region: str) -> None:
    client = kms(region)

    def make(client: Any) -> str:
        key = client.create_key(Description="mine")["KeyMetadata"]
        client.create_alias(AliasName="alias/my-team", TargetKeyId=key["KeyId"])
        return str(key["Arn"])

    mine = client.describe_key(KeyId=yours(region, make))["KeyMetadata"]
    done = CliRunner().invoke(main, ["setup", "--yes", "--region", region, "--kms-key", "alias/my-team"])
    assert done.exit_code == 0, done.output
    assert userconfig.load()["kms_key"] == mine["Arn"]
    assert f"KMS key {mine['Arn']}: found — yours" in done.output
    assert client.list_resource_tags(KeyId=mine["Arn"])["Tags"] == []  # setup changes nothing of a key you bring
    assert bucket_rule(region)["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == mine["Arn"]


# ---------------------------------------------------------------------------- failure table: unusable keys


@dataclass
class Row:
    name: str
    make: Callable[[Any], str]  # makes the key's state in KMS; returns what --kms-key names
    said: str  # in setup's error and doctor's problem


def _missing(client: Any) -> str:
    return "alias/no-such-key"


def _disabled(client: Any) -> str:
    key = client.create_key()["KeyMetadata"]
    client.disable_key(KeyId=key["KeyId"])  # moto's DisableKey takes the key id only
    return str(key["Arn"])


def _pending_deletion(client: Any) -> str:
    key = client.create_key()["KeyMetadata"]["KeyId"]
    client.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    return str(key)


ROWS = [
    Row("missing", _missing, "not found"),
    Row("disabled", _disabled, "disabled"),
    Row("pending deletion", _pending_deletion, "pending deletion"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_an_unusable_key_is_refused_before_anything_changes(region: str, row: Row) -> None:
    key = yours(region, row.make)
    with pytest.raises(CloudError, match=f"the KMS key {key} is {row.said}.*nothing was changed"):
        quiet(region, kms_key=key)
    buckets = [b["Name"] for b in boto3.client("s3", region_name=region).list_buckets()["Buckets"]]
    assert f"cloudburst-{ACCOUNT}-{region}" not in buckets
    assert not userconfig.config_path().exists()


@pytest.mark.parametrize("row", ROWS[1:], ids=[r.name for r in ROWS[1:]])
def test_doctor_flags_a_configured_key_that_became_unusable(region: str, row: Row) -> None:
    client = kms(region)
    arn = quiet(region, kms_key="create").config["kms_key"]
    key_id = arn.rsplit("/", 1)[1]
    if row.name == "disabled":
        client.disable_key(KeyId=key_id)
    else:
        client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    problem = next(s for s in doctor(region=region, echo=lambda line: None).problems if s.name == f"KMS key {arn}")
    assert problem.detail == row.said and "cloudburst setup --kms-key" in problem.fix
    with pytest.raises(CloudError, match=row.said):
        quiet(region)  # the configured key, unusable: refused too


# ---------------------------------------------------------------------------- grants only with a key


def test_grants_on_the_key_only_when_one_is_configured(region: str) -> None:
    names = Names(ACCOUNT, region)
    key = f"arn:aws:kms:{region}:{ACCOUNT}:key/1234"
    job = {"job_id": "j1", "tasks_queue": "q-t", "results_queue": "q-r", "key_parameter": "/cloudburst/jobs/j1/key"}
    via = {"StringEquals": {"kms:ViaService": [f"ssm.{region}.amazonaws.com", f"s3.{region}.amazonaws.com"]}}
    for document in (worker_policy(names, **job, kms_key=key), boundary_policy(names, key)):
        (grant,) = key_statements(document)
        assert sorted(_list(grant["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
        assert grant["Resource"] == key and grant["Condition"] == via
    (grant,) = key_statements(build_policy(names, key))
    assert grant["Action"] == ["kms:Decrypt"] and grant["Resource"] == key
    for document in (worker_policy(names, **job), boundary_policy(names), build_policy(names)):
        assert not key_statements(document)  # aws/ssm and SSE-S3 need no grant

    arn = quiet(region, kms_key="create").config["kms_key"]
    assert [s["Resource"] for s in key_statements(boundary(region))] == [arn]
    assert [s["Resource"] for s in key_statements(role_policy(region, f"cloudburst-build-{region}"))] == [arn]
    # setup and doctor compare the roles against documents built with the configured key
    lines: list[str] = []
    setup(region=region, echo=lines.append)
    assert "Nothing changed" in lines[-1], lines


# ---------------------------------------------------------------------------- a job with the key


@pytest.mark.timeout(300)
def test_a_job_keeps_its_key_under_the_configured_kms_key_and_gets_its_results(region: str) -> None:
    arn = quiet(region, kms_key="create").config["kms_key"]
    userconfig.set_value("image", EMULATED_IMAGE)  # the emulator's agent runs this machine's interpreter
    ssm = boto3.client("ssm", region_name=region)
    with cloudburst.Executor(1, backend="fargate") as ex:
        assert ex.submit(abs, -3).result(timeout=120) == 3
        name = f"/cloudburst/jobs/{ex.job_id}/key"
        found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
        assert [p["KeyId"] for p in found] == [arn]
        role = f"cloudburst-job-{ex.job_id}"
        policy = boto3.client("iam").get_role_policy(RoleName=role, PolicyName="cloudburst-job")["PolicyDocument"]
        assert [s["Resource"] for s in key_statements(policy)] == [arn]
        assert list(ex.map(abs, [-1, -2])) == [1, 2]


# ---------------------------------------------------------------------------- teardown


def test_teardown_schedules_deletion_of_the_key_setup_made(region: str) -> None:
    arn = quiet(region, kms_key="create").config["kms_key"]
    lines: list[str] = []
    teardown(region=region, echo=lines.append)
    metadata = kms(region).describe_key(KeyId=arn)["KeyMetadata"]
    assert metadata["KeyState"] == "PendingDeletion"
    wait = metadata["DeletionDate"] - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=6, hours=23) < wait <= datetime.timedelta(days=7, minutes=5)
    aliases = [a["AliasName"] for a in kms(region).list_aliases()["Aliases"]]
    assert f"alias/cloudburst-{region}" not in aliases
    assert any(line.startswith(f"- KMS key {arn}") for line in lines), lines
    assert "kms_key" not in userconfig.load()


def test_teardown_leaves_a_key_you_brought_alone_and_says_so(region: str) -> None:
    mine = yours(region, lambda client: str(client.create_key(Description="mine")["KeyMetadata"]["Arn"]))
    quiet(region, kms_key=mine)
    lines: list[str] = []
    teardown(region=region, echo=lines.append)
    assert kms(region).describe_key(KeyId=mine)["KeyMetadata"]["KeyState"] == "Enabled"
    assert f"· KMS key {mine}: kept — yours (not made by setup): left alone" in lines
