"""The storage and secrets around a job: the bucket, job keys, secrets, and the files written on this machine.

moto stores bucket policies but does not evaluate their conditions, and it ignores
``ExpectedBucketOwner``. So the TLS-only policy is checked by reading the document, and S3's
owner check is played by a botocore ``before-send`` hook in this process (:class:`S3OwnerCheck`):
an AWS-side stand-in that answers 403, as S3 does, when a request names an owner other than the
bucket's real one, and that records every S3 request with the owner it named.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.awsrequest
import pytest

from cloudburst.backends.aws import clients, ops
from cloudburst.backends.aws.images import list_bundles, prune_bundles
from cloudburst.backends.aws.setup import Report, doctor, setup, teardown
from cloudburst.backends.aws.store import S3Store
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator
from cloudburst.errors import CloudError

from .conftest import STORAGE_REGIONS, fresh_region_fixture

ACCOUNT = "123456789012"  # the emulated account
TLS_ONLY_SID = "CloudburstDenyWithoutTLS"  # the statement setup adds to the bucket policy
region = fresh_region_fixture(STORAGE_REGIONS, reuse=True)


def quiet_setup(region: str, **kwargs: Any) -> Report:
    return setup(region=region, echo=lambda line: None, **kwargs)


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


class S3OwnerCheck:
    """S3's ExpectedBucketOwner check, for the emulated account: every bucket is owned by ACCOUNT.

    ``requests`` holds ``(operation, bucket named?, owner header)`` for each S3 request sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: Any, event_name: str, **_: Any) -> botocore.awsrequest.AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        owner = request.headers.get("x-amz-expected-bucket-owner")
        owner = owner.decode() if isinstance(owner, bytes) else (owner or "")
        self.requests.append((operation, owner))
        if owner and owner != ACCOUNT:
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            return botocore.awsrequest.AWSResponse(request.url, 403, {}, _Body(body))
        return None

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch, regions: list[str | None]) -> S3OwnerCheck:
        """On fresh sessions of ``clients`` (their clients copy the hook as they are made)."""
        monkeypatch.setattr(clients, "_sessions", {})
        monkeypatch.setattr(clients, "_clients", {})
        check = cls()
        for name in regions:
            clients.session(name).events.register("before-send.s3", check)
        return check


# ---------------------------------------------------------------------------- the bucket


def test_setup_puts_a_bucket_policy_denying_requests_without_tls(region: str) -> None:
    # moto keeps the policy but does not evaluate aws:SecureTransport: the document is what is checked.
    bucket = quiet_setup(region).config["bucket"]
    policy = json.loads(boto3.client("s3", region_name=region).get_bucket_policy(Bucket=bucket)["Policy"])
    deny = [s for s in policy["Statement"] if s.get("Sid") == TLS_ONLY_SID]
    assert deny == [
        {
            "Sid": TLS_ONLY_SID,
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]


def test_doctor_flags_a_bucket_without_the_tls_policy_and_setup_repairs_it_keeping_other_statements(
    region: str,
) -> None:
    bucket = quiet_setup(region).config["bucket"]
    s3 = boto3.client("s3", region_name=region)
    theirs = {
        "Sid": "TheirOwn",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:DeleteBucket",
        "Resource": f"arn:aws:s3:::{bucket}",
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]}))

    lines: list[str] = []
    report = doctor(region=region, echo=lines.append)
    problem = next(s for s in report.problems if s.name == f"bucket {bucket}")
    assert "requests without TLS denied" in problem.detail and "cloudburst setup" in problem.fix

    quiet_setup(region)
    statements = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert [s["Sid"] for s in statements] == ["TheirOwn", TLS_ONLY_SID]
    assert not [s for s in doctor(region=region, echo=lines.append).problems if s.name == f"bucket {bucket}"]


def test_object_ownership_is_enforced_and_checked(region: str) -> None:
    bucket = quiet_setup(region).config["bucket"]
    s3 = boto3.client("s3", region_name=region)
    rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "ObjectWriter"}]})
    problem = next(s for s in doctor(region=region, echo=lambda line: None).problems if s.name == f"bucket {bucket}")
    assert "object ownership enforced" in problem.detail


def test_every_s3_request_names_the_bucket_owner(region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check = S3OwnerCheck.install(monkeypatch, [region])
    bucket = quiet_setup(region).config["bucket"]
    doctor(region=region, echo=lambda line: None)
    store = S3Store(bucket, "jobs/owner-test", region)  # what the client and each worker use
    store.put("small", b"x")
    store.put("large", bytes(17 << 20))  # multipart, through s3transfer
    assert store.exists("small") and not store.exists("missing")
    assert store.get("small") == b"x"
    assert store.get_file("large", Path(userconfig.config_path().parent)).stat().st_size == 17 << 20
    store.delete_prefix("")
    boto3.client("s3", region_name=region).put_object(Bucket=bucket, Key="envs/old.zip", Body=b"z")
    assert [o["Key"] for o in list_bundles(region, None, bucket)] == ["envs/old.zip"]
    assert prune_bundles(region, None, bucket, keep=0) == ["envs/old.zip"]
    ops.find_jobs(region, None, bucket, "cloudburst")
    teardown(region=region, echo=lambda line: None)

    operations = {op for op, _ in check.requests}
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "GetObject", "HeadObject"} <= operations
    assert {"DeleteObjects", "ListObjectsV2", "PutBucketPolicy", "DeleteBucket"} <= operations
    # CreateBucket and ListBuckets take no owner: the one makes the bucket, the other lists only the caller's.
    unpinned = [(op, owner) for op, owner in check.requests if op not in ("CreateBucket", "ListBuckets")]
    assert unpinned and all(owner == ACCOUNT for _, owner in unpinned), [o for o in unpinned if o[1] != ACCOUNT]


def test_a_bucket_of_cloudburst_s_name_owned_by_another_account_receives_nothing(
    region: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a teardown, someone else creates cloudburst-<your account>-<region>. Here another identity of
    # the emulated account plays the stranger: it owns a bucket named for account 999999999999.
    S3OwnerCheck.install(monkeypatch, [region])
    stranger = emulator.admin("s3", region)
    bucket = f"cloudburst-999999999999-{region}"
    stranger.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})

    store = S3Store(bucket, "jobs/victim", region)
    with pytest.raises(CloudError, match="AccessDenied"):
        store.put("data", b"secret")
    with pytest.raises(CloudError, match="AccessDenied"):
        store.put("big", bytes(17 << 20))
    with pytest.raises(CloudError, match="AccessDenied"):
        store.get("data")
    assert not stranger.list_objects_v2(Bucket=bucket).get("Contents")


# ---------------------------------------------------------------------------- job keys


def test_a_job_key_is_tagged_with_its_job_and_expires_by_itself(emulator: Emulator) -> None:
    import datetime

    import cloudburst

    with cloudburst.Executor(backend="fargate", workers=1) as ex:
        name = ex._job.backend._key_parameter  # type: ignore[attr-defined]
        ssm = boto3.client("ssm")
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]
        assert {"Key": "cloudburst:job", "Value": ex.job_id} in tags
        found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"][0]
        assert found["Tier"] == "Advanced" and found["Type"] == "SecureString"
        (policy,) = found["Policies"]
        expiration = ast.literal_eval(policy["PolicyText"])  # moto shows it as a Python repr; AWS as JSON
        assert expiration["Type"] == "Expiration"
        expires = datetime.datetime.strptime(expiration["Attributes"]["Timestamp"], "%Y-%m-%dT%H:%M:%S.000Z")
        expires = expires.replace(tzinfo=datetime.timezone.utc)
        days = (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400
        assert 6.9 < days <= 7, "a job key lives as long as the job's data (the bucket's 7-day rule)"


def test_cleanup_finds_a_lone_job_key_by_its_tag_and_leaves_parameters_that_only_look_like_one(region: str) -> None:
    # A client killed after deleting its queues and data, before its key: only the key is left.
    bucket = f"cloudburst-{ACCOUNT}-{region}"
    boto3.client("s3", region_name=region).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
    )
    ssm = boto3.client("ssm", region_name=region)
    job_id = "f" * 32
    tags = [{"Key": "cloudburst:job", "Value": job_id}, {"Key": "cloudburst", "Value": "true"}]
    ssm.put_parameter(Name=f"/cloudburst/jobs/{job_id}/key", Value="00" * 32, Type="SecureString", Tags=tags)
    # The user's own parameter below the same path, without the job's tag: not cloudburst's to delete.
    ssm.put_parameter(Name=f"/cloudburst/jobs/{job_id}/notes", Value="mine", Type="String")

    jobs = ops.find_jobs(region, None, bucket, "cloudburst")
    assert list(jobs[job_id].keys) == [f"/cloudburst/jobs/{job_id}/key"]
    assert not ops.leftovers(jobs, older_than=3600), "a key younger than the threshold may be a job starting"
    (view,) = ops.leftovers(jobs, older_than=0)
    assert ops.cleanup(view, region, None, bucket, "cloudburst") == [f"key /cloudburst/jobs/{job_id}/key"]
    left = [p["Name"] for p in ssm.describe_parameters()["Parameters"]]
    assert left == [f"/cloudburst/jobs/{job_id}/notes"]


# ---------------------------------------------------------------------------- index logins


@pytest.mark.parametrize(
    "setting",
    [
        "PIP_EXTRA_INDEX_URL=http://bot:t0ken@private.example.com/simple",  # login in the URL
        "UV_INDEX_URL=http://private.example.com/simple",  # login in ~/.netrc
    ],
)
def test_an_index_that_needs_a_login_must_be_https(
    setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cloudburst.environment.snapshot import index_credentials
    from cloudburst.errors import ConfigurationError

    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))
    (tmp_path / "netrc").write_text("machine private.example.com login bot password t0ken\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    name, _, value = setting.partition("=")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=r"needs a login.*use https://private\.example\.com/simple"):
        index_credentials()
    monkeypatch.setenv(name, value.replace("http://", "https://"))
    assert "machine private.example.com login bot password t0ken" in index_credentials()


# ---------------------------------------------------------------------------- secrets=


def _read_env(name: str) -> str:
    import os

    return os.environ.get(name, "<unset>")


def test_secrets_reach_fargate_and_local_workers_and_no_runtask_override(emulator: Emulator) -> None:
    import cloudburst

    ssm = boto3.client("ssm")
    path = "/cloudburst/secrets/test-secrets/token"
    ssm.put_parameter(Name=path, Value="s3cret-value", Type="SecureString", Overwrite=True)
    with cloudburst.Executor(backend="fargate", workers=1, secrets={"API_TOKEN": f"ssm:{path}"}) as ex:
        assert ex.submit(_read_env, "API_TOKEN").result(timeout=120) == "s3cret-value"
        launcher: Any = ex._job.resources.launcher
        tasks = boto3.client("ecs").describe_tasks(cluster=launcher.settings.cluster, tasks=sorted(launcher.task_ids()))
        assert tasks["tasks"] and "s3cret-value" not in json.dumps(tasks["tasks"], default=str)
        definition = boto3.client("ecs").describe_task_definition(taskDefinition=launcher.task_definition)
        container = definition["taskDefinition"]["containerDefinitions"][0]
        assert {"name": "API_TOKEN", "valueFrom": path} in container["secrets"]
        assert "s3cret-value" not in json.dumps(container)
    with cloudburst.Executor(backend="fargate", workers=1, local_workers=1, secrets={"API_TOKEN": f"ssm:{path}"}) as ex:
        answers = {f.result(timeout=120) for f in [ex.submit(_read_env, "API_TOKEN") for _ in range(4)]}
        assert answers == {"s3cret-value"}


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"1BAD": "ssm:/a"}, "not a variable name"),
        ({"AWS_SECRET_ACCESS_KEY": "ssm:/a"}, "not a variable name"),
        ({"TOKEN": "/a/b"}, "as 'ssm:/path/to/parameter'"),
        ({"TOKEN": "ssm:relative"}, "as 'ssm:/path/to/parameter'"),
        ("TOKEN=ssm:/a", "must map variable names"),
        ({"TOKEN": "ssm:/myapp/token"}, "outside /cloudburst/secrets/, the only path workers may read"),
    ],
)
def test_secrets_are_checked_before_anything_starts(secrets: object, message: str) -> None:
    from cloudburst.backends.aws.settings import FargateSettings
    from cloudburst.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=message):
        FargateSettings.resolve({"secrets": secrets}, environ={})


# ---------------------------------------------------------------------------- files on this machine


def _say(x: int) -> int:
    print(f"a line for the worker's log {x}")
    return x


def test_what_clients_workers_and_supervisors_write_is_in_private_folders(emulator: Emulator) -> None:
    import os
    import stat
    import tempfile

    import cloudburst
    from cloudburst.core import scratch

    # A Fargate worker with cpu=2 runs a supervisor of two processes (their logs are files); plus a local worker.
    with cloudburst.Executor(backend="fargate", workers=1, cpu=2, local_workers=1) as ex:
        assert sorted(ex.map(_say, range(8), timeout=180)) == list(range(8))
        temp = Path(tempfile.gettempdir())
        ours = [p for p in temp.iterdir() if p.name.startswith("cloudburst")]
        assert ours
        for path in ours:
            info = os.lstat(path)
            if info.st_uid != os.geteuid():
                continue  # another user's run on a shared machine
            assert stat.S_ISDIR(info.st_mode) and not info.st_mode & 0o077, f"{path} is open to others"
        logs = list(scratch.root().rglob("*.log"))
        assert logs, "the supervisor's and the local worker's logs are below the scratch root"
        for log in logs:
            for folder in log.relative_to(scratch.root()).parents:
                mode = os.lstat(scratch.root() / folder).st_mode
                assert not mode & 0o077, f"{scratch.root() / folder} is open to others"
