"""``cloudburst selftest``: a tiny job on the account, end to end, and what it proves.

::

    job 1 (1 worker, 0.25 vCPU) ── say_hello ──► the worker writes a marker to its own output
      │  kept open                              ► image:     what the worker ran, and its digest
      │                                         ► logs:      the marker in the worker's CloudWatch stream
      ├─ job 2 (1 worker) ── try_read_key(job 1's key parameter) with job 2's own credentials
      │                                         ► isolation: AccessDenied, or FAILED
      close both                                ► workers:   started, ran, stopped
                                                ► cost:      the jobs' cost computed, under max_cost
                                                ► clean-up:  queues, key, job prefix, job role gone

Each check is one line: its name, ok or FAILED, the seconds it took, the cents it cost, and what
it saw. Both jobs run under ``max_cost_per_job`` and are ended whatever happens. Under the
emulator (``python -m cloudburst.emulator -- cloudburst selftest``) the same steps run on this
machine.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...protocol.workerenv import from_environ
from .bootstrap import BUNDLE_VARIABLE
from .clients import client, error_code
from .policies import job_role_name
from .wire import FargateWire

__all__ = ["Check", "Report", "image_digest", "say_hello", "selftest", "try_read_key"]

RESULT_TIMEOUT = 900.0  # a first job on a new account may wait minutes for Fargate capacity and the image pull
LOG_TIMEOUT = 180.0  # CloudWatch Logs shows a line some seconds after the container wrote it
STOP_TIMEOUT = 300.0  # Fargate stops a task within its stop timeout (at most 120 s) plus deprovisioning
GONE_TIMEOUT = 120.0  # SQS lists a deleted queue for up to 60 s
_DENIED = ("AccessDeniedException", "AccessDenied")
_ECR_IMAGE = re.compile(
    r"^(?P<registry>\d+)\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com[^/]*/(?P<repository>[^:@]+):(?P<tag>.+)$"
)


@dataclass
class Check:
    """One line of the self-test: a check's name, its outcome, its time and cost, and what it saw."""

    name: str
    ok: bool
    seconds: float
    cents: float = 0.0
    detail: str = ""

    def line(self) -> str:
        """The check as the command prints it."""
        return (
            f"{self.name:10} {'ok' if self.ok else 'FAILED':7} {self.seconds:7.1f} s {self.cents:8.3f} ¢  {self.detail}"
        )


@dataclass
class Report:
    """Every check of one self-test run."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def cents(self) -> float:
        """What the self-test's jobs cost, in US cents."""
        return sum(c.cents for c in self.checks if c.name in ("workers", "isolation"))


# ---------------------------------------------------------------------------- what the workers run


def say_hello(marker: str) -> dict[str, str]:
    """On job 1's worker: write ``marker`` to the worker's own output (the container's, not captured)."""
    os.write(2, f"{marker}\n".encode())
    where = FargateWire.from_args(from_environ(os.environ).backend_args)
    return {"marker": marker, "key_parameter": where.job_key_parameter}


def try_read_key(name: str, region: str) -> str:
    """On job 2's worker: ask SSM for another job's key with this worker's own credentials.

    Returns the AWS error code, or ``"READ"`` if the key was handed over (never the key itself)."""
    import boto3
    import botocore.exceptions

    try:
        boto3.client("ssm", region_name=region).get_parameter(Name=name, WithDecryption=True)
    except botocore.exceptions.ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return "READ"


# ---------------------------------------------------------------------------- the run


@dataclass
class _Run:
    region: str
    profile: str | None
    max_cost: float
    bucket: str
    cluster: str
    log_group: str
    marker: str = field(default_factory=lambda: f"cloudburst-selftest-{uuid.uuid4().hex[:12]}")
    jobs: list[Any] = field(default_factory=list)  # the executors, job 1 first
    task_ids: set[str] = field(default_factory=set)  # job 1's Fargate tasks
    hello: dict[str, str] = field(default_factory=dict)
    open_seconds: float = 0.0
    ran_seconds: float = 0.0

    def executor(self) -> Any:
        """One job of one small worker on Fargate, under the cost cap, never kept, detached or local."""
        import cloudburst

        ex = cloudburst.Executor(
            1,
            backend="fargate",
            cpu=0.25,
            memory="512MB",
            retries=0,
            region=self.region,
            profile=self.profile,
            max_cost_per_job=self.max_cost,
            local_workers=0,
            detached=False,
            keep=False,
            debug=False,
        )
        self.jobs.append(ex)
        return ex

    def ecs_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """Every ECS task the job started, running or stopped, as DescribeTasks tells."""
        ecs: Any = client("ecs", self.region, self.profile)
        arns: set[str] = set()
        for status in ("RUNNING", "STOPPED"):
            pages = ecs.get_paginator("list_tasks").paginate(
                cluster=self.cluster, startedBy=f"cloudburst-{job_id[:24]}", desiredStatus=status
            )
            arns.update(arn for page in pages for arn in page.get("taskArns", []))
        ordered = sorted(arns)
        found: list[dict[str, Any]] = []
        for start in range(0, len(ordered), 100):
            found += ecs.describe_tasks(cluster=self.cluster, tasks=ordered[start : start + 100]).get("tasks", [])
        return found


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def image_digest(image: str, task: dict[str, Any], region: str, profile: str | None) -> str:
    """The digest of the image a task ran: named in its reference, reported by ECS, or looked up in ECR."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    for container in task.get("containers", []):
        if container.get("imageDigest"):
            return str(container["imageDigest"])
    found = _ECR_IMAGE.match(image)
    if not found:
        return ""
    ecr: Any = client("ecr", region, profile)
    try:
        details = ecr.describe_images(
            registryId=found["registry"], repositoryName=found["repository"], imageIds=[{"imageTag": found["tag"]}]
        )["imageDetails"]
    except Exception as exc:
        if error_code(exc) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return ""
        raise
    return str(details[0].get("imageDigest", "")) if details else ""


def _check_image(run: _Run) -> Check:
    """Open job 1 (its image found or built), run one item on it, and name the image it ran by digest."""
    from ...emulator import EMULATED_IMAGE

    started = time.monotonic()
    ex = run.executor()
    run.open_seconds = time.monotonic() - started
    began = time.monotonic()
    run.hello = ex.submit(say_hello, run.marker).result(timeout=RESULT_TIMEOUT)
    run.ran_seconds = time.monotonic() - began
    tasks = run.ecs_tasks(ex.job_id)
    run.task_ids = {str(t["taskArn"]).rsplit("/", 1)[-1] for t in tasks}
    if not tasks:
        return Check("image", False, run.open_seconds, detail="job 1 lists no ECS task: nothing ran on Fargate")
    ecs: Any = client("ecs", run.region, run.profile)
    definition = ecs.describe_task_definition(taskDefinition=tasks[0]["taskDefinitionArn"])["taskDefinition"]
    container = definition["containerDefinitions"][0]
    image = str(container["image"])
    bundle = next((e["value"] for e in container.get("environment", []) if e["name"] == BUNDLE_VARIABLE), "")
    seconds = run.open_seconds + time.monotonic() - began - run.ran_seconds
    if image == EMULATED_IMAGE:
        return Check("image", True, seconds, detail=f"{image}: EMULATED, this machine's interpreter (no digest)")
    digest = image_digest(image, tasks[0], run.region, run.profile)
    if digest:
        return Check("image", True, seconds, detail=f"{image.split('@')[0]} @ {digest}")
    if bundle and "#" in bundle:
        return Check("image", True, seconds, detail=f"stock {image}, environment bundle sha256:{bundle.split('#')[1]}")
    return Check(
        "image",
        False,
        seconds,
        detail=f"{image} has no digest (a tag can be pushed again): name the image by digest, repo@sha256:...",
    )


def _check_logs(run: _Run) -> Check:
    """The line job 1's task wrote is in its worker's CloudWatch log stream."""
    from .fargate import CONTAINER, LOG_PREFIX

    started = time.monotonic()
    logs: Any = client("logs", run.region, run.profile)

    def logged() -> bool:
        for task_id in run.task_ids:
            try:
                events = logs.get_log_events(
                    logGroupName=run.log_group, logStreamName=f"{LOG_PREFIX}/{CONTAINER}/{task_id}", startFromHead=True
                )["events"]
            except Exception as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    continue  # the stream appears with the first line
                raise
            if any(run.marker in str(e.get("message", "")) for e in events):
                return True
        return False

    ok = _wait(logged, LOG_TIMEOUT)
    detail = (
        f"{run.marker} found in {run.log_group}"
        if ok
        else f"{run.marker} not in {run.log_group} after {LOG_TIMEOUT:g} s"
    )
    return Check("logs", ok, time.monotonic() - started, detail=detail)


def _check_isolation(run: _Run) -> Check:
    """Job 2's worker, with its own credentials, must be refused job 1's key (job 1 still open)."""
    started = time.monotonic()
    name = run.hello.get("key_parameter") or f"/cloudburst/jobs/{run.jobs[0].job_id}/key"
    ssm: Any = client("ssm", run.region, run.profile)
    ssm.get_parameter(Name=name)  # it exists now (as the client sees it): a refusal below is a refusal
    second = run.executor()
    try:
        answer = second.submit(try_read_key, name, run.region).result(timeout=RESULT_TIMEOUT)
    finally:
        second.shutdown(wait=True, cancel_futures=True)
    cents = second.cost * 100
    seconds = time.monotonic() - started
    if answer in _DENIED:
        return Check("isolation", True, seconds, cents, f"job 2's worker was refused job 1's key ({answer})")
    if answer == "READ":
        detail = "job 2's worker READ job 1's key: jobs are not isolated (their workers share one role)"
    else:
        detail = f"job 2's worker got {answer} for job 1's key, not AccessDenied: nothing proven"
    return Check("isolation", False, seconds, cents, detail)


def _check_workers(run: _Run) -> Check:
    """Job 1's worker started and ran the item; after close, every task of the job is STOPPED."""
    first = run.jobs[0]
    started = time.monotonic()
    first.shutdown(wait=True)
    cents = first.cost * 100

    def running() -> list[str]:
        return [
            str(t["taskArn"]).rsplit("/", 1)[-1] for t in run.ecs_tasks(first.job_id) if t["lastStatus"] != "STOPPED"
        ]

    stopped = _wait(lambda: not running(), STOP_TIMEOUT, interval=2.0)
    seconds = run.ran_seconds + time.monotonic() - started
    ran = run.hello.get("marker") == run.marker
    ok = bool(run.task_ids) and ran and stopped
    detail = f"{len(run.task_ids)} started, item ran in {run.ran_seconds:.1f} s, " + (
        "all stopped" if stopped else f"still running after {STOP_TIMEOUT:g} s: {', '.join(running())}"
    )
    return Check("workers", ok, seconds, cents, detail)


def _check_cost(run: _Run, spent_cents: float) -> Check:
    """The jobs' cost was computed (a worker that ran bills at least a minute) and stayed under the cap."""
    ok = 0 < spent_cents <= run.max_cost * 100
    detail = f"{spent_cents:.3f} ¢ for {len(run.jobs)} jobs, cap {run.max_cost * 100:g} ¢"
    if spent_cents <= 0:
        detail += ": no cost computed for workers that ran"
    return Check("cost", ok, 0.0, spent_cents, detail)


def _leftovers(run: _Run, job_id: str) -> list[str]:
    """What of a closed job is still in the account: queues, key parameter, objects, job role."""
    left: list[str] = []
    sqs: Any = client("sqs", run.region, run.profile)
    if sqs.list_queues(QueueNamePrefix=f"cloudburst-{job_id[:20]}").get("QueueUrls"):
        left.append("queues")
    try:
        client("ssm", run.region, run.profile).get_parameter(Name=f"/cloudburst/jobs/{job_id}/key")
        left.append("key parameter")
    except Exception as exc:
        if error_code(exc) != "ParameterNotFound":
            raise
    s3: Any = client("s3", run.region, run.profile)
    if s3.list_objects_v2(Bucket=run.bucket, Prefix=f"jobs/{job_id}/", MaxKeys=1).get("KeyCount"):
        left.append(f"s3://{run.bucket}/jobs/{job_id}/")
    try:
        client("iam", run.region, run.profile).get_role(RoleName=job_role_name(job_id))
        left.append("job role")
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
    return left


def _check_cleanup(run: _Run) -> Check:
    """Nothing of either job stays after close."""
    started = time.monotonic()
    left: dict[str, list[str]] = {}

    def clean() -> bool:
        left.clear()
        for ex in run.jobs:
            found = _leftovers(run, ex.job_id)
            if found:
                left[ex.job_id[:12]] = found
        return not left

    ok = _wait(clean, GONE_TIMEOUT, interval=2.0)
    detail = (
        "queues, key parameter, job prefix and job role gone for both jobs"
        if ok
        else "; ".join(f"job {job}: {', '.join(what)} left" for job, what in left.items())
    )
    return Check("clean-up", ok, time.monotonic() - started, detail=detail)


def _attempt(name: str, step: Callable[[], Check]) -> Check:
    """Run one check; an error ends it FAILED with the error's first line."""
    started = time.monotonic()
    try:
        return step()
    except Exception as exc:  # a check that cannot finish is a failed check; the others still run
        first = " ".join(str(exc).strip().split("\n\n", 1)[0].split())
        return Check(name, False, time.monotonic() - started, detail=f"{type(exc).__name__}: {first}")


def selftest(
    *,
    region: str | None = None,
    profile: str | None = None,
    max_cost: float = 0.05,
    echo: Callable[[str], None] = print,
) -> Report:
    """Run the self-test against the set-up account (or the emulator); ``echo`` gets each check's line."""
    from .settings import FargateSettings

    settings = FargateSettings.resolve({"region": region, "profile": profile})
    settings.require_setup()
    run = _Run(
        region=region or client("ecs", region, profile).meta.region_name,
        profile=profile,
        max_cost=max_cost,
        bucket=settings.bucket,
        cluster=settings.cluster,
        log_group=settings.log_group,
    )
    report = Report()

    def record(check: Check) -> None:
        report.checks.append(check)
        echo(check.line())

    try:
        record(_attempt("image", lambda: _check_image(run)))
        if run.hello:
            record(_attempt("logs", lambda: _check_logs(run)))
            record(_attempt("isolation", lambda: _check_isolation(run)))
            record(_attempt("workers", lambda: _check_workers(run)))
        else:
            for name in ("logs", "isolation", "workers"):
                record(Check(name, False, 0.0, detail="not run: job 1's item did not come back"))
    finally:
        for ex in run.jobs:
            ex.terminate()  # ends whatever a failed check left running; nothing for a closed job
    spent = sum(ex.cost for ex in run.jobs) * 100
    record(_check_cost(run, spent))
    record(_attempt("clean-up", lambda: _check_cleanup(run)))
    return report
