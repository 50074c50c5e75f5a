"""Seeing what runs: jobs found in the account by their tags and names, their logs, and cleanup.

A job leaves these traces, all named or tagged with its id: SQS queues
``cloudburst-<id>-{tasks,results,dlq}``, objects under ``s3://bucket/jobs/<id>/`` (with the
client's heartbeat in ``control/state``), ECS tasks started by ``cloudburst-<id>``, the job's
own IAM role (``/cloudburst/jobs/cloudburst-job-<id>``), and the job key's SSM parameter, found by
its tag ``cloudburst:job=<id>`` (never by its name, which anyone may give a parameter). A job whose
client has been silent longer than a threshold, and that is not a detached job, is a leftover:
``cleanup`` removes its traces. A key left alone (its job's other traces gone) is a leftover once it
is older than the threshold; keys also expire by themselves (an SSM Expiration policy) when nobody
runs ``cleanup``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ...errors import PayloadAuthenticationError
from ...log import warn
from ...protocol.sealing import job_tag
from ...protocol.task import open_control
from .clients import client, error_code
from .fargate import CONTAINER, JOB_TAG, LOG_PREFIX
from .job_roles import delete_job_role, job_roles
from .owner import s3_client
from .pricing import billed_seconds

__all__ = ["JobView", "cleanup", "find_jobs", "log_lines"]

_ROLES = ("tasks", "results", "dlq")


@dataclass
class JobView:
    job_id: str  # as far as names carry it (queue names hold its first 20 characters)
    queues: dict[str, str] = field(default_factory=dict)  # role -> url
    tasks: list[dict[str, Any]] = field(default_factory=list)  # ECS task descriptions
    heartbeat_age: float | None = None  # seconds since the client's last heartbeat
    stopped: bool = False  # the client said the job ended
    detached: bool = False
    waiting: int = 0  # task messages not yet taken
    running: int = 0  # task messages leased by workers
    results: int = 0  # result messages not yet collected
    role: str = ""  # the job's own IAM role, when it still exists
    keys: dict[str, float] = field(default_factory=dict)  # job key parameter -> its age in seconds

    @property
    def workers(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for task in self.tasks:
            states[task.get("lastStatus", "?")] = states.get(task.get("lastStatus", "?"), 0) + 1
        return states

    def cost(self, hourly: float) -> float:
        return sum(billed_seconds(t) for t in self.tasks) * hourly / 3600

    def as_dict(self, hourly: float) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "workers": self.workers,
            "tasks_waiting": self.waiting,
            "tasks_running": self.running,
            "results_waiting": self.results,
            "heartbeat_age_seconds": self.heartbeat_age,
            "detached": self.detached,
            "cost_usd": round(self.cost(hourly), 6),
        }


def find_jobs(region: str | None, profile: str | None, bucket: str, cluster: str) -> dict[str, JobView]:
    """Every job with queues, data or tasks in this region."""
    sqs: Any = client("sqs", region, profile)
    jobs: dict[str, JobView] = {}
    for url in sqs.list_queues(QueueNamePrefix="cloudburst-").get("QueueUrls", []):
        name = url.rsplit("/", 1)[-1]
        short, _, role = name.removeprefix("cloudburst-").rpartition("-")
        if role not in _ROLES:
            continue
        tags = _queue_tags(sqs, url)
        job_id = tags.get("cloudburst:job", short)
        view = jobs.setdefault(job_id, JobView(job_id))
        view.queues[role] = url
        counts = _queue_counts(sqs, url)
        if role == "tasks":
            view.waiting, view.running = counts
        elif role == "results":
            view.results = counts[0]
    for role, job_id in job_roles(region, profile).items():
        if job_id:
            jobs.setdefault(job_id, JobView(job_id)).role = role
    ecs: Any = client("ecs", region, profile)
    for task in _cluster_tasks(ecs, cluster):
        started_by = str(task.get("startedBy", ""))
        if not started_by.startswith("cloudburst-"):
            continue
        prefix = started_by.removeprefix("cloudburst-")
        job_id = next((j for j in jobs if j.startswith(prefix)), prefix)
        jobs.setdefault(job_id, JobView(job_id)).tasks.append(task)
    ssm: Any = client("ssm", region, profile)
    for name, job_id, age in _job_keys(ssm):
        known = next((j for j in jobs if job_id.startswith(j)), job_id)  # queue names may carry a prefix of it
        jobs.setdefault(known, JobView(known)).keys[name] = age
    s3: Any = s3_client(bucket, region, profile)
    for job_id, view in jobs.items():
        state = _read_state(s3, ssm, bucket, job_id, next(iter(view.keys), ""))
        if state is not None:
            view.heartbeat_age = max(0.0, time.time() - float(state.get("heartbeat", 0)))  # type: ignore[arg-type]
            view.stopped = bool(state.get("stopped"))
    _mark_detached(jobs)
    return jobs


def _read_state(s3: Any, ssm: Any, bucket: str, job_id: str, key_name: str) -> dict[str, object] | None:
    """A job's control record, checked against its key (the parameter tagged with the job); None when either
    is missing or when its seal fails (a forged record is ignored, and said so)."""
    if not key_name:
        return None
    try:
        data = s3.get_object(Bucket=bucket, Key=f"jobs/{job_id}/control/state")["Body"].read()
        key = ssm.get_parameter(Name=key_name, WithDecryption=True)["Parameter"]["Value"]
    except Exception:
        return None
    try:
        return open_control(bytes.fromhex(key), "state", data, job=job_tag(job_id))  # the key was found by tag
    except (PayloadAuthenticationError, ValueError) as exc:
        warn(f"cloudburst: job {job_id[:12]}: ignored its control record: {exc}")
        return None


def _job_keys(ssm: Any) -> Iterator[tuple[str, str, float]]:
    """``(parameter, job id, age in seconds)`` of every job key, found by cloudburst's tag and then its job tag."""
    tagged = [{"Key": "tag:cloudburst", "Values": ["true"]}]
    try:
        for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=tagged):
            for parameter in page.get("Parameters", []):
                tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=parameter["Name"])["TagList"]
                job_id = next((t["Value"] for t in tags if t["Key"] == JOB_TAG), "")
                if job_id:
                    modified = parameter.get("LastModifiedDate")
                    age = time.time() - modified.timestamp() if modified is not None else 0.0
                    yield parameter["Name"], job_id, max(0.0, age)
    except Exception as exc:
        warn(f"cloudburst: could not list job keys: {exc}")


def _queue_tags(sqs: Any, url: str) -> dict[str, str]:
    try:
        return dict(sqs.list_queue_tags(QueueUrl=url).get("Tags", {}))
    except Exception:
        return {}


def _queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    try:
        attrs = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])
    except Exception:
        return 0, 0


def _cluster_tasks(ecs: Any, cluster: str) -> Iterator[dict[str, Any]]:
    arns: list[str] = []
    for status in ("RUNNING", "STOPPED"):
        try:
            for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus=status):
                arns += page.get("taskArns", [])
        except Exception as exc:
            if error_code(exc) == "ClusterNotFoundException":
                return
            raise
    for start in range(0, len(arns), 100):
        yield from ecs.describe_tasks(cluster=cluster, tasks=arns[start : start + 100]).get("tasks", [])


def _mark_detached(jobs: dict[str, JobView]) -> None:
    from ...detached import jobs as detached_jobs

    for record in detached_jobs():
        for job_id, view in jobs.items():
            if record.job_id.startswith(job_id) and not record.collected:
                view.detached = True


def leftovers(jobs: dict[str, JobView], older_than: float) -> list[JobView]:
    """Jobs whose client is gone: silent (or never heard) for ``older_than`` seconds, not detached."""
    found = []
    for view in jobs.values():
        if view.detached:
            continue
        silent = view.heartbeat_age is None or view.heartbeat_age > older_than or view.stopped
        live_workers = any(t.get("lastStatus") != "STOPPED" for t in view.tasks)
        if silent and (view.queues or live_workers or view.role or view.heartbeat_age is not None):
            found.append(view)
        elif not view.queues and not view.tasks and view.keys and min(view.keys.values()) > older_than:
            found.append(view)  # only its key is left (a client killed after deleting the rest)
    return found


def cleanup(view: JobView, region: str | None, profile: str | None, bucket: str, cluster: str) -> list[str]:
    """Stop a leftover job's workers and delete its queues, data, role and key. Returns what was removed."""
    removed: list[str] = []
    ecs: Any = client("ecs", region, profile)
    for task in view.tasks:
        if task.get("lastStatus") != "STOPPED":
            ecs.stop_task(cluster=cluster, task=task["taskArn"], reason="cloudburst cleanup: the client is gone")
            removed.append(f"worker {str(task['taskArn']).rsplit('/', 1)[-1]}")
    sqs: Any = client("sqs", region, profile)
    for url in view.queues.values():
        sqs.delete_queue(QueueUrl=url)
        removed.append(f"queue {url.rsplit('/', 1)[-1]}")
    s3: Any = s3_client(bucket, region, profile)
    paginator = s3.get_paginator("list_objects_v2")
    count = 0
    for page in paginator.paginate(Bucket=bucket, Prefix=f"jobs/{view.job_id}"):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            count += len(keys)
    if count:
        removed.append(f"{count} object(s) under s3://{bucket}/jobs/{view.job_id}")
    if view.role and delete_job_role(client("iam", region, profile), view.role):
        removed.append(f"role {view.role}")
    return removed + _delete_keys(client("ssm", region, profile), view)


def _delete_keys(ssm: Any, view: JobView) -> list[str]:
    """Delete the job's keys: those found with the job, and any other parameter tagged with its id."""
    names = set(view.keys)
    by_tag = [{"Key": f"tag:{JOB_TAG}", "Values": [view.job_id]}]
    for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=by_tag):
        names.update(p["Name"] for p in page.get("Parameters", []))
    removed = []
    for name in sorted(names):
        try:
            ssm.delete_parameter(Name=name)
            removed.append(f"key {name}")
        except Exception as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
    return removed


def log_lines(
    region: str | None,
    profile: str | None,
    log_group: str,
    task_ids: list[str],
    *,
    tail: int | None = None,
    since: int | None = None,
) -> list[tuple[int, str, str]]:
    """``(timestamp ms, worker id, line)`` of these workers' logs, oldest first."""
    logs: Any = client("logs", region, profile)
    out: list[tuple[int, str, str]] = []
    for task_id in task_ids:
        stream = f"{LOG_PREFIX}/{CONTAINER}/{task_id}"
        try:
            kwargs: dict[str, Any] = {"logGroupName": log_group, "logStreamName": stream, "startFromHead": tail is None}
            if tail is not None:
                kwargs["limit"] = tail
            if since is not None:
                kwargs["startTime"] = since
            events = logs.get_log_events(**kwargs).get("events", [])
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                continue
            raise
        out += [(int(e["timestamp"]), task_id, str(e["message"])) for e in events]
    out.sort()
    return out[-tail:] if tail is not None else out
