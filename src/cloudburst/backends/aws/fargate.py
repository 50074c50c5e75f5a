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
import json
import math
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ...config.options import ExecutorOptions
from ...config.userconfig import lookup
from ...core import scratch
from ...core.words import plural
from ...log import say
from ...protocol.workerenv import WorkerEnv, from_environ
from ..base import Backend, JobResources, WorkerPrice, WorkerSide
from ..cachebase import CacheSite
from ..local import LocalLauncher
from .cachestore import open_fargate_cache
from .clients import client, error_code, is_gone, is_transient, translate
from .credentials import AWS_IDENTITY_VARIABLES, CredentialsEndpoint
from .job_roles import JobRole, delete_job_role, principal_of
from .launcher import FargateLauncher, TokenBucket
from .parameters import delete_key, read_secrets, store_key
from .policies import Names, worker_policy
from .pricing import prices, task_cost
from .queue import JobQueues, SQSQueue, create_job_queues, delete_job_queues
from .quota import fit_workers, pending_requests, read_quota, request_increase
from .settings import OPTION_NAMES, FargateSettings
from .sizes import task_size
from .store import S3Store
from .taskdef import CONTAINER, JOB_TAG, LOG_PREFIX, ensure_task_definition, worker_environment
from .wire import FargateWire

# FargateLauncher, TokenBucket, ensure_task_definition and the names in the task definition live in their own
# modules (launcher, taskdef); they are named here too, where they always were.
__all__ = [
    "CONTAINER",
    "JOB_TAG",
    "LOG_PREFIX",
    "FargateBackend",
    "FargateLauncher",
    "TokenBucket",
    "ensure_task_definition",
]


def _ecs_task_id() -> str:
    """Inside a Fargate task: its id, from the task metadata endpoint ECS gives every container."""
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if metadata:
        try:
            with urllib.request.urlopen(f"{metadata}/task", timeout=2) as response:
                return str(json.loads(response.read())["TaskARN"]).rsplit("/", 1)[-1]
        except Exception as exc:
            print(f"cloudburst-worker: no task id from the metadata endpoint: {exc}", file=sys.stderr)
    return f"{os.uname().nodename}-{os.getpid()}"


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
            image, self.bundle, self.netrc_parameter = worker_environment(self.settings)
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
        s = self.settings
        quota = read_quota(s.region, s.profile, s.cluster, spot=s.spot)
        if quota is None:
            return workers  # Service Quotas not readable: launches that hit the limit back off
        fits, line = fit_workers(quota, workers, self.cpu_units / 1024, on_short=s.on_quota_short)
        if line:
            say(line)
            wanted = math.ceil((quota.in_use + workers * self.cpu_units / 1024) * 1.2)  # 20% headroom
            ask = s.auto_quota_request or (
                sys.stdin.isatty()
                and input(f"Ask AWS to raise the {quota.name} quota to {wanted} vCPUs? [y/N] ").strip().lower()
                in ("y", "yes")
            )
            if ask and not pending_requests(s.region, s.profile):
                request_increase(s.region, s.profile, spot=s.spot, value=wanted)
                say(f"cloudburst: asked AWS to raise the {quota.name} quota to {wanted} vCPUs")
        return fits

    @classmethod
    def worker_price(
        cls, cpu: float, memory_mib: int | None, *, region: str | None = None, arch: str = "x86_64", spot: bool = False
    ) -> WorkerPrice:
        """Fargate's price of one task of this size, billed per second with a one-minute minimum."""
        cpu_units, mib = task_size(cpu, memory_mib)
        table = prices(region or "us-east-1")
        return WorkerPrice(table.hourly(cpu_units, mib, arch=arch, spot=spot), table.source, minimum_seconds=60.0)

    @classmethod
    def open_cache(cls, options: Mapping[str, object], namespace: str) -> CacheSite:
        """The stage cache below ``cache/<namespace>/`` of the set-up bucket, its key in SSM (``cachestore``)."""
        return open_fargate_cache(options, namespace)

    @classmethod
    def is_transient(cls, exc: BaseException) -> bool:
        """Throttling, a 5xx or a dropped connection (``clients.TRANSIENT_CODES``)."""
        return is_transient(exc)

    @classmethod
    def job_is_gone(cls, exc: BaseException) -> bool:
        """The job's queue or bucket was deleted (``clients.GONE_CODES``)."""
        return is_gone(exc)

    @classmethod
    def defaults(cls) -> dict[str, object]:
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
        wire = FargateWire.from_args(from_environ(record["env"]).backend_args)
        delete_key(region, None, wire.job_key_parameter)
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
            self._key_parameter = store_key(s, job_id, self._key_hex, tags)
            self._role = self._make_role(job_id, queues, region, tags)
            return self._open(job_id, queues, task_definition, region, worker_env)
        except BaseException:
            delete_job_queues(queues, s.region, s.profile)  # nothing of a job that never started stays
            delete_key(s.region, s.profile, self._key_parameter)
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
        where = FargateWire(
            region=region,
            bucket=s.bucket,
            prefix=prefix,
            task_queue=queues.tasks,
            result_queue=queues.results,
            dead_letter_queue=queues.dead_letters,
            job_key_parameter=self._key_parameter,
        )
        wire = worker_env.replace(
            job_key="",
            backend=self.name,
            backend_args=where.to_args(),
            slots=self.tasks_per_worker,
            supervisor=True,  # so that a task holding the GIL cannot stop the client watch
        )
        local = self._local_helpers(job_id, wire, worker_env) if s.local_workers else None
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

    def _local_helpers(self, job_id: str, wire: WorkerEnv, worker_env: WorkerEnv) -> LocalLauncher:
        """Start ``local_workers`` workers on this machine, pulling from the job's queues with its role."""
        s = self.settings
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
            job_key=worker_env.job_key,  # a process of this machine: no need to fetch it
            slots=1,
            supervisor=False,  # a local worker: the kernel ends it with this process
            parent_pid=os.getpid(),
            sys_path=tuple(p for p in sys.path if p),
            user_env={},  # in base_env, under the job's credentials
        )
        local = LocalLauncher(local_wire, base_env, self._log_dir, prefix="local-")
        local.start(s.local_workers)
        return local

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
            delete_key(self.settings.region, self.settings.profile, self._key_parameter)
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
        where = FargateWire.from_args(env.backend_args)
        region = where.region or None
        extra: dict[str, object] = {"worker_id": env.worker_id or _ecs_task_id()}
        if not env.job_key and where.job_key_parameter:
            ssm: Any = client("ssm", region)
            with translate("SSM", "GetParameter", where.job_key_parameter):
                found = ssm.get_parameter(Name=where.job_key_parameter, WithDecryption=True)
            extra["job_key"] = found["Parameter"]["Value"]
        if where.dead_letter_queue:
            extra["dead_letters"] = SQSQueue(where.dead_letter_queue, region)
        return WorkerSide(
            S3Store(where.bucket, where.prefix, region),
            SQSQueue(where.task_queue, region),
            SQSQueue(where.result_queue, region),
            parent_pid=env.parent_pid,
            extra=extra,
        )
