"""The ``fargate`` backend: workers are ECS Fargate tasks pulling from SQS, blobs live in S3.

::

    client                                         AWS
    open_job ── CreateQueue ×3 (tasks, results, dead letters), tagged with the job id
             └─ RegisterTaskDefinition, once per (image, cpu, memory, arch, disk)
    scale ───── RunTask (≤10 per call, rate-limited, backoff on throttling/capacity)
    poll ────── DescribeTasks (≤100 ids per call) ─► stopped workers: exit code, stopCode, reason
    close ───── StopTask each, DeleteQueue ×3, delete s3://bucket/jobs/<id>/

Each Fargate task runs ``python -m cloudburst.worker`` as a supervisor
(the wire field ``supervisor``) of N worker processes for ``cpu=N`` (at least one),
each the same loop as every backend. The supervisor, which runs no user code,
stops them when the job ends or the client falls silent. ``local_workers=N`` adds
workers on this machine that pull from the same queue while Fargate cold-starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ...config.options import ExecutorOptions
from ...core import scratch
from ...core.words import plural
from ...errors import CloudError
from ...log import say, warn
from ...protocol import workerenv
from ...protocol.workerenv import WorkerEnv, from_environ
from ..base import Backend, JobResources, WorkerExit, WorkerSide
from ..local import LocalLauncher
from .clients import client, error_code, translate
from .credentials import AWS_IDENTITY_VARIABLES, CredentialsEndpoint
from .job_roles import PROPAGATION_SECONDS, JobRole, delete_job_role, principal_of
from .policies import Names, worker_policy
from .pricing import prices, task_cost
from .queue import JobQueues, SQSQueue, create_job_queues, delete_job_queues
from .quota import fit_workers, pending_requests, read_quota, request_increase
from .settings import OPTION_NAMES, FargateSettings
from .sizes import task_size
from .store import S3Store

__all__ = ["FargateBackend", "FargateLauncher", "TokenBucket"]

CONTAINER = "worker"
JOB_TAG = "cloudburst:job"
LOG_PREFIX = "cloudburst"
RUN_TASK_MAX = 10  # RunTask starts at most ten tasks per call
DESCRIBE_MAX = 100  # DescribeTasks takes at most 100 ids per call
_RETRYABLE_CODES = frozenset({"ThrottlingException", "Throttling", "ServerException", "LimitExceededException"})
_CAPACITY_WORDS = (
    "capacity",
    "resource:",
    "throttl",
    "rate exceeded",
    "vcpu limit",
    "limit exceeded",
    "limit on the number of vcpus",  # the quota is full for now: wait for running tasks to end
)


class TokenBucket:
    """Allows ``rate`` events per second with bursts of ``burst`` (AWS's own limiter model)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` tokens now; returns how many were granted."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            granted = min(wanted, int(self._tokens))
            self._tokens -= granted
            return granted


#: a job key expires by itself after this long, whoever runs cleanup or not: as long as the job's data lives
#: (the bucket's lifecycle rule for jobs/), as a key outliving its data seals nothing anyone reads
KEY_LIFETIME_DAYS = 7


def _store_key(settings: FargateSettings, job_id: str, key_hex: str, tags: Mapping[str, str]) -> str:
    """Keep the job key in an encrypted SSM parameter, tagged with the job; returns its name.

    Advanced tier, for its Expiration policy: the key is deleted by SSM after KEY_LIFETIME_DAYS even when
    the client dies and nobody runs ``cloudburst cleanup``. It costs $0.05 per parameter-month, charged
    by the hour: about $0.0001 for a job of an hour."""
    import datetime

    name = f"/cloudburst/jobs/{job_id}/key"
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=KEY_LIFETIME_DAYS)
    expiration = {
        "Type": "Expiration",
        "Version": "1.0",
        "Attributes": {"Timestamp": expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")},
    }
    extra = {"KeyId": settings.kms_key} if settings.kms_key else {}  # else SSM's AWS-managed key, aws/ssm
    ssm: Any = client("ssm", settings.region, settings.profile)
    with translate("SSM", "PutParameter", name):
        ssm.put_parameter(
            Name=name,
            Value=key_hex,
            Type="SecureString",
            Tier="Advanced",
            Policies=json.dumps([expiration]),
            Description="cloudburst job key (deleted with the job)",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            **extra,
        )
    return name


def read_secrets(settings: FargateSettings) -> dict[str, str]:
    """The values of ``secrets=``, read from SSM (decrypted) by this client: for workers on this machine."""
    if not settings.secrets:
        return {}
    names = {v.removeprefix("ssm:"): k for k, v in settings.secrets.items()}
    ssm: Any = client("ssm", settings.region, settings.profile)
    found: dict[str, str] = {}
    for start in range(0, len(names), 10):  # GetParameters takes ten names at most
        batch = sorted(names)[start : start + 10]
        with translate("SSM", "GetParameters", ", ".join(batch)):
            response = ssm.get_parameters(Names=batch, WithDecryption=True)
        found.update({p["Name"]: p["Value"] for p in response.get("Parameters", [])})
        missing = response.get("InvalidParameters") or []
        if missing:
            raise CloudError(
                f"secrets: the SSM parameter(s) {', '.join(missing)} do not exist (or this identity may not read "
                "them): create them with `aws ssm put-parameter --type SecureString`, or fix the path",
                service="SSM",
                operation="GetParameters",
                code="ParameterNotFound",
            )
    return {names[path]: value for path, value in found.items()}


def _delete_key(region: str | None, profile: str | None, name: str) -> None:
    if not name:
        return
    try:
        client("ssm", region, profile).delete_parameter(Name=name)
    except Exception as exc:
        if error_code(exc) != "ParameterNotFound":
            warn(f"cloudburst: could not delete the job key parameter {name}: {exc}")


def _environment(settings: FargateSettings) -> tuple[str, str, str]:
    """``(image, bundle, index-login parameter)`` when no image is named (the user writes no Dockerfile).

    No image: this environment's image, found in ECR by its tag or built. ``image="python"``: the stock
    Python image, with the environment bundle (uploaded once) installed by each worker as it starts.
    """
    from ...config.userconfig import load
    from ...environment.snapshot import base_image, index_credentials, snapshot
    from ...errors import NotSetUpError
    from .images import ensure_bundle, ensure_image, store_index_credentials

    def echo(line: str) -> None:
        say(line)

    snap = snapshot(settings.requirements or None, arch=settings.arch)
    if settings.arch == "arm64":
        from ...environment.wheels import require_arm64_wheels

        require_arm64_wheels(snap)
    if settings.image == "python":
        bundle = ensure_bundle(
            snap,
            region=settings.region,
            profile=settings.profile,
            bucket=settings.bucket,
            arch=settings.arch,
            echo=echo,
        )
        logins = index_credentials(snap) if snap.private_hosts else ""
        return base_image(snap.python), bundle, store_index_credentials(settings.region, settings.profile, logins)
    config = load()
    if not config.get("build_role_arn"):
        raise NotSetUpError(
            "backend='fargate' has no worker image, and no role to build one: run `cloudburst setup` (it adds "
            "the image build role), pass image='<uri>' naming an image with cloudburst and your packages, or "
            "image='python' to install your packages as each worker starts"
        )
    image = ensure_image(
        snap,
        region=settings.region,
        profile=settings.profile,
        repository=str(config.get("ecr_repository", "cloudburst")),
        bucket=settings.bucket,
        role_arn=str(config["build_role_arn"]),
        arch=settings.arch,
        echo=echo,
    )
    return image, "", ""


def _ecs_task_id() -> str:
    """Inside a Fargate task: its id, from the task metadata endpoint ECS gives every container."""
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if metadata:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{metadata}/task", timeout=2) as response:
                return str(json.loads(response.read())["TaskARN"]).rsplit("/", 1)[-1]
        except Exception as exc:
            print(f"cloudburst-worker: no task id from the metadata endpoint: {exc}", file=sys.stderr)
    return f"{os.uname().nodename}-{os.getpid()}"


def ensure_task_definition(
    settings: FargateSettings, cpu_units: int, memory_mib: int, *, bundle: str = "", netrc_parameter: str = ""
) -> str:
    """The task definition for this worker shape: registered once, found again by its content hash.

    With an environment ``bundle`` (the no-build fallback) the container runs the bootstrap, which
    installs the bundle and then the worker loop; index logins come from ``netrc_parameter`` as an ECS
    secret, resolved by ECS when the task starts."""
    command = ["python", "-m", "cloudburst.worker"]
    if bundle:
        from ...worker import bootstrap

        command = ["python", "-c", bootstrap.script()]  # with the uv and boto3 pins written in
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "essential": True,
        "command": command,
        "memory": memory_mib,  # the task-level value is what counts; moto needs one here too
        "stopTimeout": 120,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": settings.log_group,
                "awslogs-region": settings.region or client("ecs", settings.region, settings.profile).meta.region_name,
                "awslogs-stream-prefix": LOG_PREFIX,
            },
        },
    }
    if bundle:
        container["environment"] = [{"name": k, "value": v} for k, v in workerenv.environ(bundle=bundle).items()]
    secrets = [{"name": workerenv.variable("netrc"), "valueFrom": netrc_parameter}] if netrc_parameter else []
    # The user's secrets= too: ECS reads them as the task starts, so they are in no RunTask override.
    secrets += [{"name": k, "valueFrom": v.removeprefix("ssm:")} for k, v in sorted(settings.secrets.items())]
    if secrets:
        container["secrets"] = secrets
    spec: dict[str, Any] = {
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": str(cpu_units),
        "memory": str(memory_mib),
        "executionRoleArn": settings.execution_role_arn,
        "runtimePlatform": {
            "cpuArchitecture": "ARM64" if settings.arch == "arm64" else "X86_64",
            "operatingSystemFamily": "LINUX",
        },
        "containerDefinitions": [container],
    }
    # No taskRoleArn: each job's own role is passed with RunTask (overrides.taskRoleArn).
    if settings.ephemeral_storage > 20:
        spec["ephemeralStorage"] = {"sizeInGiB": settings.ephemeral_storage}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
    family = f"cloudburst-{digest}"
    ecs: Any = client("ecs", settings.region, settings.profile)
    where = (ecs.meta.endpoint_url, ecs.meta.region_name, family)  # one cache entry per account endpoint
    cached = _TASK_DEFINITIONS.get(where)
    if cached:
        return cached
    try:
        found = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
        arn = str(found["taskDefinitionArn"]) if found.get("status") == "ACTIVE" else ""
    except Exception as exc:
        if error_code(exc) not in ("ClientException", "InvalidParameterException", "ResourceNotFoundException"):
            with translate("ECS", "DescribeTaskDefinition", family):
                raise
        arn = ""
    if not arn:
        with translate("ECS", "RegisterTaskDefinition", family):
            made = ecs.register_task_definition(family=family, tags=[{"key": "cloudburst", "value": "true"}], **spec)
        arn = str(made["taskDefinition"]["taskDefinitionArn"])
    _TASK_DEFINITIONS[where] = arn
    return arn


_TASK_DEFINITIONS: dict[tuple[str, str, str], str] = {}


def _role_not_known_yet(exc: BaseException) -> bool:
    """RunTask's answer while a role made moments ago is not yet usable everywhere in IAM."""
    text = str(exc).lower()
    return error_code(exc) in ("ClientException", "InvalidParameterException") and "unable to assume" in text


def describe_stop(task: Mapping[str, Any]) -> tuple[int | None, str, bool]:
    """``(exit code, one-line reason, interrupted from outside)`` of a stopped ECS task."""
    containers = task.get("containers") or [{}]
    container = containers[0]
    code = container.get("exitCode")
    stop_code = str(task.get("stopCode") or "")
    stopped_reason = str(task.get("stoppedReason") or "")
    container_reason = str(container.get("reason") or "")
    parts = []
    if container_reason.startswith("OutOfMemoryError"):
        parts.append(f"{container_reason} (ask for more memory=)")
    elif stop_code == "SpotInterruption" or stopped_reason.startswith("Your Spot Task was interrupted"):
        parts.append(f"Fargate Spot interruption: {stopped_reason or 'reclaimed by AWS'}")
    elif stop_code == "TaskFailedToStart":
        parts.append(f"failed to start: {stopped_reason or container_reason}")
    else:
        if stopped_reason:
            parts.append(stopped_reason)
        if container_reason:
            parts.append(container_reason)
    if code is None:
        parts.append("no exit code")
    elif 128 < int(code) < 160:  # a process killed by a signal exits 128+N in a container
        try:
            parts.append(f"killed by {signal.Signals(int(code) - 128).name} (exit code {code})")
        except ValueError:
            parts.append(f"exit code {code}")
    else:
        parts.append(f"exit code {code}")
    interrupted = stop_code in ("SpotInterruption", "UserInitiated", "TerminationNotice", "ServiceSchedulerInitiated")
    interrupted = interrupted or stopped_reason.startswith("Your Spot Task was interrupted")
    return (None if code is None else int(code)), ", ".join(parts), interrupted


class FargateLauncher:
    """Starts, watches and stops a job's Fargate tasks (and its local helper workers)."""

    def __init__(
        self,
        settings: FargateSettings,
        *,
        job_id: str,
        task_definition: str,
        environment: Mapping[str, str],
        task_role_arn: str = "",
        local: LocalLauncher | None = None,
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.task_role_arn = task_role_arn
        self.task_definition = task_definition
        self.environment = dict(environment)
        self._environment = [{"name": k, "value": v} for k, v in sorted(environment.items())]
        self._ecs: Any = client("ecs", settings.region, settings.profile)
        self._logs: Any = client("logs", settings.region, settings.profile)
        self.local = local
        self._lock = threading.Lock()
        self._live: set[str] = set()  # task ids launched and not yet seen stopped
        self._stopped: set[str] = set()
        self.described: dict[str, dict[str, Any]] = {}  # task id -> its last DescribeTasks record
        self._next_poll = 0.0
        self._calls = TokenBucket(rate=20, burst=20)  # RunTask calls per second
        self._launches = TokenBucket(rate=20, burst=100)  # Fargate task launches per second
        self._backoff = 0.0
        self._not_before = 0.0
        self.notices: list[str] = []  # one line per launch problem, for the user
        self._closed = False
        self._role_known_by = time.monotonic() + PROPAGATION_SECONDS
        self.announce: Callable[[int], str] | None = None  # the line the first launch prints

    # ------------------------------------------------------------------ contract
    def start(self, count: int) -> list[str]:
        if self.announce is not None and count > 0:
            say(self.announce(count))
            self.announce = None
        started: list[str] = []
        while count > 0 and time.monotonic() >= self._not_before and not self._closed:
            batch = min(RUN_TASK_MAX, count, self._launches.take(min(RUN_TASK_MAX, count)))
            if batch == 0 or self._calls.take(1) == 0:
                break
            ids, problem = self._run_tasks(batch)
            started += ids
            count -= batch
            if problem:
                self._back_off(problem)
                break
            self._backoff = 0.0
        return started

    def stop(self, worker_ids: Sequence[str] | None = None) -> None:
        with self._lock:
            if worker_ids is None:
                self._closed = True  # the job is ending: nothing new starts
            targets = [t for t in self._live if worker_ids is None or t in worker_ids]
        if worker_ids is None:
            targets = sorted(set(targets) | self._listed())
        for task_id in targets:
            try:
                self._ecs.stop_task(cluster=self.settings.cluster, task=task_id, reason="cloudburst: the job ended")
            except Exception as exc:  # already gone, or the cluster is: nothing left to stop
                if error_code(exc) not in ("InvalidParameterException", "ClusterNotFoundException"):
                    warn(f"cloudburst: could not stop worker {task_id}: {exc}")
        if self.local is not None and (worker_ids is None or any(w.startswith("local-") for w in worker_ids)):
            self.local.stop(None if worker_ids is None else [w for w in worker_ids if w.startswith("local-")])

    def poll(self) -> list[WorkerExit]:
        exits = self.local.poll() if self.local is not None else []
        now = time.monotonic()
        if now < self._next_poll:
            return exits
        self._next_poll = now + self.settings.poll_interval
        with self._lock:
            ids = sorted(self._live)
        for start in range(0, len(ids), DESCRIBE_MAX):
            with translate("ECS", "DescribeTasks"):
                response = self._ecs.describe_tasks(
                    cluster=self.settings.cluster, tasks=ids[start : start + DESCRIBE_MAX]
                )
            for task in response.get("tasks", []):
                task_id = str(task["taskArn"]).rsplit("/", 1)[-1]
                self.described[task_id] = task
                if task.get("lastStatus") != "STOPPED":
                    continue
                with self._lock:
                    if task_id not in self._live:
                        continue
                    self._live.discard(task_id)
                    self._stopped.add(task_id)
                code, reason, interrupted = describe_stop(task)
                tail = self._log_tail(task_id) if code != 0 else ""
                exits.append(WorkerExit(task_id, code, reason, tail, interrupted))
        return exits

    def running(self) -> int:
        with self._lock:
            return len(self._live)

    # ------------------------------------------------------------------ details
    def _listed(self) -> set[str]:
        """This job's tasks as ECS lists them (a RunTask whose answer was lost is found here too)."""
        found: set[str] = set()
        try:
            pages = self._ecs.get_paginator("list_tasks").paginate(
                cluster=self.settings.cluster, startedBy=f"cloudburst-{self.job_id[:24]}", desiredStatus="RUNNING"
            )
            for page in pages:
                found.update(str(arn).rsplit("/", 1)[-1] for arn in page.get("taskArns", []))
        except Exception as exc:
            warn(f"cloudburst: could not list the job's workers: {exc}")
        return found

    def stopped_ids(self) -> set[str]:
        with self._lock:
            return set(self._stopped)

    def task_ids(self) -> set[str]:
        """Every Fargate task this launcher started, running or stopped."""
        with self._lock:
            return self._live | self._stopped

    def _run_tasks(self, count: int) -> tuple[list[str], str]:
        s = self.settings
        request: dict[str, Any] = {
            "cluster": s.cluster,
            "taskDefinition": self.task_definition,
            "count": count,
            "startedBy": f"cloudburst-{self.job_id[:24]}",
            "clientToken": uuid.uuid4().hex,  # botocore's own retries of this call start nothing twice
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(s.subnets),
                    "securityGroups": list(s.security_groups),
                    "assignPublicIp": "ENABLED" if s.assign_public_ip else "DISABLED",
                }
            },
            "overrides": {
                "containerOverrides": [{"name": CONTAINER, "environment": self._environment}],
                "taskRoleArn": self.task_role_arn,  # the job's own role: its workers reach nothing else
            },
            "tags": [{"key": JOB_TAG, "value": self.job_id}, {"key": "cloudburst", "value": "true"}]
            + [{"key": k, "value": v} for k, v in s.tags.items()],
        }
        if s.debug:
            request["enableExecuteCommand"] = True  # ECS Exec: a shell in the worker
        if s.spot:
            request["capacityProviderStrategy"] = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
        else:
            request["launchType"] = "FARGATE"
        try:
            response = self._ecs.run_task(**request)
        except Exception as exc:
            code = error_code(exc)
            if code in _RETRYABLE_CODES:
                return [], f"RunTask throttled ({code})"
            if _role_not_known_yet(exc) and time.monotonic() < self._role_known_by:
                return [], "ECS cannot take the job's new role yet (IAM is still making it known)"
            with translate("ECS", "RunTask", f"on cluster {s.cluster}"):
                raise
        ids = [str(t["taskArn"]).rsplit("/", 1)[-1] for t in response.get("tasks", [])]
        with self._lock:
            self._live.update(ids)
        failures = response.get("failures") or []
        if failures:
            reasons = sorted({str(f.get("reason", "")) for f in failures})
            text = "; ".join(reasons)
            if any(word in text.lower() for word in _CAPACITY_WORDS):
                return ids, f"Fargate could not start {len(failures)} worker(s): {text}"
            raise CloudError(
                f"ECS RunTask could not start workers: {text}", service="ECS", operation="RunTask", code=reasons[0]
            )
        return ids, ""

    def _back_off(self, problem: str) -> None:
        self._backoff = min(60.0, max(1.0, self._backoff * 2))
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._not_before = time.monotonic() + delay
        line = f"cloudburst: {problem}; trying again in {delay:.0f} s"
        self.notices.append(line)
        say(line)

    def _log_tail(self, task_id: str, lines: int = 30) -> str:
        try:
            response = self._logs.get_log_events(
                logGroupName=self.settings.log_group,
                logStreamName=f"{LOG_PREFIX}/{CONTAINER}/{task_id}",
                limit=lines,
                startFromHead=False,
            )
        except Exception:
            return ""
        return "\n".join(str(e.get("message", "")) for e in response.get("events", []))


class FargateBackend(Backend):
    """Workers as ECS Fargate tasks, tasks and results through SQS, blobs in S3."""

    name: ClassVar[str] = "fargate"
    option_names: ClassVar[frozenset[str]] = OPTION_NAMES
    max_message_bytes: ClassVar[int] = 256 * 1024  # raw; base64 in SQS stays well under its 1 MiB
    target_task_seconds: ClassVar[float] = 2.0
    result_wait: ClassVar[float] = 5.0
    start_eagerly: ClassVar[bool] = False

    def __init__(self, options: ExecutorOptions) -> None:
        super().__init__(options)
        self.settings = FargateSettings.resolve(options.backend_options)
        self.settings.require_setup()
        self.bundle = self.netrc_parameter = ""
        if not self.settings.image or self.settings.image == "python":
            image, self.bundle, self.netrc_parameter = _environment(self.settings)
            self.settings = dataclasses.replace(self.settings, image=image)
        self.cpu_units, self.memory_mib = task_size(options.cpu, options.memory_mib)
        self.lease_seconds = self.settings.lease_seconds
        self._workers = self._fit_quota(options.workers, options.cpu)
        region = self.settings.region or client("ecs", None, self.settings.profile).meta.region_name
        self.prices = prices(region)
        self.hourly = self.prices.hourly(
            self.cpu_units,
            self.memory_mib,
            arch=self.settings.arch,
            spot=self.settings.spot,
            storage_gb=self.settings.ephemeral_storage,
        )
        # Workers look for the stop flag and the client's heartbeat a few times per client_timeout.
        self.control_period = min(15.0, self.settings.client_timeout / 4)
        self._queues: JobQueues | None = None
        self._key_parameter = ""
        self._key_hex = ""
        self._role: JobRole | None = None
        self._credentials: CredentialsEndpoint | None = None  # serves the job's role to local workers
        self._log_dir: Path | None = None

    def _fit_quota(self, workers: int, cpu: float) -> int:
        """Fit the workers to the free vCPU quota, before anything launches; say so when it bites."""
        from ...config.userconfig import lookup

        s = self.settings
        quota = read_quota(s.region, s.profile, s.cluster, spot=s.spot)
        if quota is None:
            return workers  # Service Quotas not readable: launches that hit the limit back off
        fits, line = fit_workers(quota, workers, self.cpu_units / 1024, on_short=str(lookup("on_quota_short").value))
        if line:
            say(line)
            wanted = math.ceil((quota.in_use + workers * self.cpu_units / 1024) * 1.2)  # 20% headroom
            ask = bool(lookup("auto_quota_request").value) or (
                sys.stdin.isatty()
                and input(f"Ask AWS to raise the {quota.name} quota to {wanted} vCPUs? [y/N] ").strip().lower()
                in ("y", "yes")
            )
            if ask and not pending_requests(s.region, s.profile):
                request_increase(s.region, s.profile, spot=s.spot, value=wanted)
                say(f"cloudburst: asked AWS to raise the {quota.name} quota to {wanted} vCPUs")
        return fits

    @classmethod
    def defaults(cls) -> dict[str, object]:
        from ...config.userconfig import lookup

        found: dict[str, object] = {"workers": lookup("workers").value}
        for name in ("cpu", "memory", "idle_timeout"):
            value = lookup(name)
            if value.source != "default":  # unset memory follows cpu (2 GB per vCPU)
                found[name] = value.value
        return found

    @property
    def tasks_per_worker(self) -> int:
        return max(1, math.floor(self.options.cpu))

    @property
    def slots(self) -> int:
        return self.workers * self.tasks_per_worker + self.settings.local_workers

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def idle_timeout(self) -> float | None:
        if self.options.idle_timeout is not None:
            return self.options.idle_timeout
        return 3600.0 if self.settings.debug else 120.0

    @property
    def client_timeout(self) -> float | None:
        return None if self.settings.detached else self.settings.client_timeout

    @property
    def detached(self) -> bool:
        return self.settings.detached

    @property
    def keeps_workers(self) -> bool:
        return self.settings.debug

    def cost(self, resources: JobResources) -> float:
        launcher = resources.launcher
        if not isinstance(launcher, FargateLauncher):
            return 0.0
        now = time.time()
        return sum(task_cost(task, self.hourly, now) for task in list(launcher.described.values()))

    def hourly_cost(self, workers: int) -> float:
        return workers * self.hourly

    @property
    def cost_limits(self) -> tuple[float, float]:
        return self.settings.max_cost_per_job, self.settings.cost_alert_threshold

    def job_record(self, resources: JobResources) -> dict[str, object]:
        launcher = resources.launcher
        assert isinstance(launcher, FargateLauncher) and self._queues is not None
        return {
            "env": dict(launcher.environment),
            "key": self._key_hex,
            "cluster": self.settings.cluster,
            "region": self.settings.region,
            "task_ids": sorted(launcher.task_ids()),
            "queues": [self._queues.tasks, self._queues.results, self._queues.dead_letters],
            "dead_letter_after": self._max_receives,
            "role": self._role.name if self._role else "",
        }

    @classmethod
    def forget_job(cls, record: Mapping[str, Any]) -> None:
        region = record.get("region")
        ecs: Any = client("ecs", region)
        for task_id in record.get("task_ids", []):
            try:
                ecs.stop_task(cluster=record["cluster"], task=task_id, reason="cloudburst: detached job collected")
            except Exception as exc:
                if error_code(exc) not in ("InvalidParameterException", "ClusterNotFoundException"):
                    raise
        wire = from_environ(record["env"])
        _delete_key(region, None, wire.job_key_parameter)
        if record.get("role"):
            delete_job_role(client("iam", region), record["role"])
        tasks, results, dead_letters = record["queues"]
        delete_job_queues(JobQueues(tasks, results, dead_letters), region)
        S3Store(wire.bucket, wire.prefix, region).delete_prefix("")

    @property
    def _max_receives(self) -> int:
        """Deliveries before SQS moves a task to the dead-letter queue: one more than the worker needs to
        see that its retries are used up and report it."""
        return self.options.retries + 2

    def open_job(self, job_id: str, key: bytes, worker_env: WorkerEnv) -> JobResources:
        s = self.settings
        tags = {JOB_TAG: job_id, "cloudburst": "true", **s.tags}
        region = s.region or client("ecs", s.region, s.profile).meta.region_name
        task_definition = ensure_task_definition(
            s, self.cpu_units, self.memory_mib, bundle=self.bundle, netrc_parameter=self.netrc_parameter
        )
        queues = create_job_queues(
            job_id,
            region=s.region,
            profile=s.profile,
            lease_seconds=self.lease_seconds,
            max_receives=self._max_receives,
            tags=tags,
        )
        self._queues = queues
        try:
            self._key_hex = worker_env.job_key
            self._key_parameter = _store_key(s, job_id, self._key_hex, tags)
            self._role = self._make_role(job_id, queues, region, tags)
            return self._open(job_id, queues, task_definition, region, worker_env)
        except BaseException:
            delete_job_queues(queues, s.region, s.profile)  # nothing of a job that never started stays
            _delete_key(s.region, s.profile, self._key_parameter)
            self._delete_role()
            raise

    def _make_role(self, job_id: str, queues: JobQueues, region: str, tags: Mapping[str, str]) -> JobRole:
        """The job's own role: its queues, key, objects and bundle, nothing of any other job."""
        s = self.settings
        # Account and partition come from setup's execution role: no call to learn them.
        _, partition, _, _, account, _ = s.execution_role_arn.split(":", 5)
        names = Names(account, region, partition, bucket_name=s.bucket)
        policy = worker_policy(
            names,
            job_id=job_id,
            tasks_queue=queues.tasks.rsplit("/", 1)[-1],
            results_queue=queues.results.rsplit("/", 1)[-1],
            key_parameter=self._key_parameter,
            bundle_key=self.bundle.removeprefix(f"s3://{s.bucket}/").split("#", 1)[0] if self.bundle else "",
            debug=s.debug,
            kms_key=s.kms_key,
        )
        principals: list[str] = []
        if s.local_workers:  # the client hands its local workers this role's credentials
            with translate("STS", "GetCallerIdentity"):
                principals = principal_of(client("sts", s.region, s.profile).get_caller_identity()["Arn"])
        iam = client("iam", s.region, s.profile)
        return JobRole.make(iam, names, job_id, policy, tags=tags, client_principals=principals)

    def _delete_role(self) -> None:
        if self._credentials is not None:
            self._credentials.close()
            self._credentials = None
        if self._role is not None:
            delete_job_role(client("iam", self.settings.region, self.settings.profile), self._role.name)
            self._role = None

    def _open(
        self, job_id: str, queues: JobQueues, task_definition: str, region: str, worker_env: WorkerEnv
    ) -> JobResources:
        s = self.settings
        prefix = f"jobs/{job_id}"
        # The job key is not put in RunTask's overrides (DescribeTasks and CloudTrail show them):
        # workers read it from an encrypted SSM parameter that only the task role may read.
        wire = worker_env.replace(
            job_key="",
            job_key_parameter=self._key_parameter,
            backend=self.name,
            bucket=s.bucket,
            prefix=prefix,
            task_queue=queues.tasks,
            result_queue=queues.results,
            region=region,
            slots=self.tasks_per_worker,
            supervisor=True,  # so that a task holding the GIL cannot stop the client watch
            dead_letter_queue=queues.dead_letters,
        )
        local = None
        if s.local_workers:
            self._log_dir = scratch.make(f"logs-{job_id[:8]}-")
            assert self._role is not None
            sts = client("sts", s.region, s.profile)
            self._credentials = CredentialsEndpoint(self._role.credentials_source(sts, f"cloudburst-{job_id[:20]}"))
            base_env = {
                **{k: v for k, v in os.environ.items() if k not in AWS_IDENTITY_VARIABLES},
                **worker_env.user_env,
                **self._credentials.environment(),  # the job's role, as its Fargate workers have it
                **read_secrets(s),  # what ECS gives a Fargate worker, read here for the workers of this machine
            }
            local_wire = wire.replace(
                job_key=worker_env.job_key,
                slots=1,
                supervisor=False,  # a local worker: the kernel ends it with this process
                parent_pid=os.getpid(),
                sys_path=tuple(p for p in sys.path if p),
                user_env={},  # in base_env, under the job's credentials
            )
            local = LocalLauncher(local_wire, base_env, self._log_dir, prefix="local-")
            local.start(s.local_workers)
        assert self._role is not None
        launcher = FargateLauncher(
            s,
            job_id=job_id,
            task_definition=task_definition,
            environment=wire.to_environ(),
            task_role_arn=self._role.arn,
            local=local,
        )
        launcher.announce = self._cost_line
        return JobResources(
            S3Store(s.bucket, prefix, s.region, s.profile),
            SQSQueue(queues.tasks, s.region, s.profile),
            SQSQueue(queues.results, s.region, s.profile),
            launcher,
            dead_letters=SQSQueue(queues.dead_letters, s.region, s.profile),
            dead_letter_after=self._max_receives,
        )

    def _cost_line(self, starting: int) -> str:
        """What the first launch says: the workers that start now, what they cost, and the ceiling."""
        kind = "Fargate Spot" if self.settings.spot else "Fargate"
        more = f"; more start as work arrives, up to {self.workers}" if starting < self.workers else ""
        return (
            f"cloudburst: starting {plural(starting, 'worker')} × {self.cpu_units / 1024:g} vCPU, "
            f"{self.memory_mib / 1024:g} GB on {kind} ≈ ${self.hourly_cost(starting):.2f}/hour "
            f"(prices: {self.prices.source}){more}"
        )

    def close_job(self, resources: JobResources, *, keep: bool = False) -> None:
        keep = keep or self.settings.keep or self.settings.detached or self.settings.debug
        launcher = resources.launcher
        if self.settings.debug and isinstance(launcher, FargateLauncher):
            self._explain_debug(launcher)
        elif not self.settings.detached:
            launcher.stop()
        if isinstance(launcher, FargateLauncher) and launcher.local is not None:
            launcher.local.stop()
        if not keep:
            _delete_key(self.settings.region, self.settings.profile, self._key_parameter)
            if self._queues is not None:
                delete_job_queues(self._queues, self.settings.region, self.settings.profile)
            store = resources.store
            store.delete_prefix("")
            self._delete_role()
        elif self._credentials is not None:
            self._credentials.close()  # the local workers are gone; the role stays with the kept job
            self._credentials = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def _explain_debug(self, launcher: FargateLauncher) -> None:
        live = sorted(launcher.task_ids() - launcher.stopped_ids())
        region = f" --region {self.settings.region}" if self.settings.region else ""
        lines = [f"cloudburst: debug=True: {len(live)} worker(s) kept running (ECS Exec on) for a shell:"]
        lines += [
            f"  aws ecs execute-command --cluster {self.settings.cluster} --task {task_id} --container {CONTAINER} "
            f"--interactive --command /bin/bash{region}"
            for task_id in live
        ]
        lines.append(f"They stop after idle_timeout ({self.idle_timeout:g} s); `cloudburst cleanup` removes the job.")
        say("\n".join(lines))

    @classmethod
    def connect_worker(cls, env: WorkerEnv) -> WorkerSide:
        region = env.region or None
        extra: dict[str, object] = {"worker_id": env.worker_id or _ecs_task_id()}
        if not env.job_key and env.job_key_parameter:
            ssm: Any = client("ssm", region)
            with translate("SSM", "GetParameter", env.job_key_parameter):
                found = ssm.get_parameter(Name=env.job_key_parameter, WithDecryption=True)
            extra["job_key"] = found["Parameter"]["Value"]
        if env.dead_letter_queue:
            extra["dead_letters"] = SQSQueue(env.dead_letter_queue, region)
        return WorkerSide(
            S3Store(env.bucket, env.prefix, region),
            SQSQueue(env.task_queue, region),
            SQSQueue(env.result_queue, region),
            parent_pid=env.parent_pid,
            extra=extra,
        )
