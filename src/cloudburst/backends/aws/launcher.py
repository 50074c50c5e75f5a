"""The Fargate launcher: starts a job's workers with RunTask (rate-limited, backing off on throttling and
short capacity), watches them with DescribeTasks (batched), stops them, and says why each stopped.

::

    start ── RunTask (≤10 per call; token buckets for calls and launches; backoff on throttling/capacity)
    poll ─── DescribeTasks (≤100 ids per call, every poll_interval) ─► stopped tasks: exit code, stopCode, reason
    stop ─── StopTask each (ListTasks finds one whose RunTask answer was lost)
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...errors import CloudError
from ...log import say, warn
from ..base import WorkerExit
from ..local import LocalLauncher
from .clients import client, error_code, translate
from .job_roles import PROPAGATION_SECONDS
from .settings import FargateSettings
from .taskdef import CONTAINER, JOB_TAG, LOG_PREFIX

__all__ = [
    "COST_FIELDS",
    "DESCRIBE_MAX",
    "RUN_TASK_MAX",
    "FargateLauncher",
    "TokenBucket",
    "cost_record",
    "describe_stop",
]

RUN_TASK_MAX = 10  # RunTask starts at most ten tasks per call
DESCRIBE_MAX = 100  # DescribeTasks takes at most 100 ids per call
#: what is kept of a DescribeTasks record (some 3 KB): what the bill needs, and how and whether it stopped
COST_FIELDS = (
    "pullStartedAt",
    "startedAt",
    "stoppedAt",
    "cpu",
    "memory",
    "capacityProviderName",
    "lastStatus",
    "stopCode",
)
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


def cost_record(task: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of a described task that its cost and fate need (``COST_FIELDS``)."""
    return {key: task[key] for key in COST_FIELDS if key in task}


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
        # Task id -> its last DescribeTasks record, cut to COST_FIELDS: a thousand workers' full records,
        # kept for the job's life and summed every second, would grow with every launch.
        self.described: dict[str, dict[str, Any]] = {}
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
                self.described[task_id] = cost_record(task)
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
