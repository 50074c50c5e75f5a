"""``cloudburst selftest`` under the emulator: every check runs, says what it saw, and fails when it should."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from cloudburst.backends.aws import selftest as st
from cloudburst.emulator import Emulator

from .conftest import users_environment

CHECKS = ["image", "logs", "isolation", "workers", "cost", "clean-up"]
LINE = re.compile(
    r"^(?P<name>\S+)\s+(?P<result>ok|FAILED)\s+(?P<seconds>[\d.]+) s\s+(?P<cents>[\d.]+) ¢  (?P<detail>.*)$"
)


def checks_of(output: str) -> dict[str, re.Match[str]]:
    """The check lines the command printed, by check name."""
    found = {}
    for line in output.splitlines():
        matched = LINE.match(line)
        if matched:
            found[matched["name"]] = matched
    return found


@pytest.mark.timeout(600)
def test_selftest_runs_every_check_under_the_emulator(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cloudburst.emulator", "--", sys.executable, "-m", "cloudburst.cli", "selftest"]
    done = subprocess.run(
        command, env=users_environment(tmp_path), capture_output=True, text=True, timeout=540, check=False
    )
    lines = checks_of(done.stdout)
    assert list(lines) == CHECKS, done.stdout + done.stderr
    for name in CHECKS:
        assert lines[name]["result"] == "ok", done.stdout + done.stderr
    assert "job 2's worker" in lines["isolation"]["detail"] and "AccessDenied" in lines["isolation"]["detail"]
    assert done.returncode == 0
    assert float(lines["workers"]["cents"]) > 0 and float(lines["isolation"]["cents"]) > 0
    cost = float(lines["cost"]["cents"])
    assert cost == pytest.approx(float(lines["workers"]["cents"]) + float(lines["isolation"]["cents"]), abs=0.01)
    assert "found in /cloudburst/workers" in lines["logs"]["detail"]
    assert "1 started" in lines["workers"]["detail"] and "all stopped" in lines["workers"]["detail"]
    assert re.search(r"selftest: .*; cost [\d.]+ ¢$", done.stdout.strip())


# ---------------------------------------------------------------------------- failure table


@dataclass
class Row:
    name: str
    fault: Callable[[Emulator], object]
    failed: dict[str, str]  # check -> what its line must say


ROWS = [
    Row(
        "workers cannot be started",
        lambda emu: emu.fail("ecs", "RunTask", code="AccessDeniedException", status=400, share=1.0),
        {
            "image": r"AccessDenied",
            "logs": r"not run: job 1's item did not come back",
            "isolation": r"not run",
            "workers": r"not run",
            "cost": r"no cost computed",
        },
    ),
    Row(
        "the worker's log lines are not kept",
        lambda emu: emu.fail("logs", "GetLogEvents", code="ResourceNotFoundException", status=400, share=1.0),
        {"logs": r"not in /cloudburst/workers after"},
    ),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_selftest_failure_table(row: Row, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "LOG_TIMEOUT", 5.0)  # a wait, not a result: the row needs no three minutes
    row.fault(emulator)
    try:
        printed: list[str] = []
        report = st.selftest(echo=printed.append)
    finally:
        emulator.clear_faults()
    by_name = {c.name: c for c in report.checks}
    assert [c.name for c in report.checks] == CHECKS and printed == [c.line() for c in report.checks]
    assert not report.ok
    for name, said in row.failed.items():
        assert not by_name[name].ok and re.search(said, by_name[name].detail), by_name[name]
    assert by_name["clean-up"].ok, by_name["clean-up"]  # a failed check leaves nothing behind


def test_cost_check_fails_when_nothing_was_computed_or_the_cap_is_passed() -> None:
    run = st._Run(region="us-east-1", profile=None, max_cost=0.01, bucket="b", cluster="c", log_group="g")
    assert st._check_cost(run, 0.5).ok
    assert not st._check_cost(run, 0.0).ok and "no cost computed" in st._check_cost(run, 0.0).detail
    assert not st._check_cost(run, 1.5).ok and "cap 1 ¢" in st._check_cost(run, 1.5).detail


def test_clean_up_check_names_each_leftover(emulator: Emulator) -> None:
    job_id = uuid.uuid4().hex
    bucket = emulator.resources["CLOUDBURST_BUCKET"]
    run = st._Run(region=emulator.region, profile=None, max_cost=0.05, bucket=bucket, cluster="c", log_group="g")
    boto3.client("sqs").create_queue(QueueName=f"cloudburst-{job_id[:20]}-tasks")
    boto3.client("ssm").put_parameter(Name=f"/cloudburst/jobs/{job_id}/key", Value="k", Type="SecureString")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"jobs/{job_id}/x", Body=b"x")
    iam = emulator.admin("iam")  # a job role as a client that died left it (the user makes none without a boundary)
    iam.create_role(RoleName=f"cloudburst-job-{job_id}", Path="/cloudburst/jobs/", AssumeRolePolicyDocument="{}")
    assert st._leftovers(run, job_id) == ["queues", "key parameter", f"s3://{bucket}/jobs/{job_id}/", "job role"]
    sqs = boto3.client("sqs")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=f"cloudburst-{job_id[:20]}-tasks")["QueueUrl"])
    boto3.client("ssm").delete_parameter(Name=f"/cloudburst/jobs/{job_id}/key")
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"jobs/{job_id}/x")
    iam.delete_role(RoleName=f"cloudburst-job-{job_id}")
    assert st._leftovers(run, job_id) == []


def test_image_digest_comes_from_the_reference_ecs_or_ecr(emulator: Emulator) -> None:
    from cloudburst.config import userconfig

    digest = "sha256:" + "a" * 64
    assert st.image_digest(f"example.com/app@{digest}", {}, emulator.region, None) == digest
    assert st.image_digest("example.com/app:1", {"containers": [{"imageDigest": digest}]}, "us-east-1", None) == digest
    assert st.image_digest("example.com/app:1", {}, emulator.region, None) == ""  # a tag, outside ECR: no digest
    # An image pushed to ECR (with a layer, so that moto gives it a fixed digest), named by its tag.
    ecr = boto3.client("ecr")
    repository = userconfig.load()["ecr_repository"]
    layer = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [{"digest": layer, "size": 1}],
    }
    tag = f"selftest-{uuid.uuid4().hex[:8]}"
    pushed = ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    uri = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]["repositoryUri"]
    assert st.image_digest(f"{uri}:{tag}", {}, emulator.region, None) == pushed["image"]["imageId"]["imageDigest"]
    assert st.image_digest(f"{uri}:no-such-tag", {}, emulator.region, None) == ""
