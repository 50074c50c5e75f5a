"""Fargate vCPU quotas: read them before launching, fit the workers to what is free, ask for more.

The quota is per account and region (``L-3032A538`` On-Demand, ``L-36FBB829`` Spot). What is
in use is the larger of the account's usage metric (CloudWatch ``AWS/Usage`` ``ResourceCount``
for Fargate vCPU, every cluster and service; published each minute) and the running tasks of
the cloudburst cluster counted now (which the metric may not show yet). Work flows through a
smaller pool without barriers: each worker takes the next task when it finishes one, so the
"waves" are only a way of telling how long it will take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigurationError
from .clients import client, translate

__all__ = [
    "ON_DEMAND",
    "SPOT",
    "Quota",
    "account_usage",
    "fit_workers",
    "pending_requests",
    "read_quota",
    "request_increase",
]

ON_DEMAND = "L-3032A538"
SPOT = "L-36FBB829"


@dataclass(frozen=True)
class Quota:
    code: str
    value: float  # vCPUs allowed at once
    in_use: float  # vCPUs in use: the account's usage metric, or the cluster's running tasks if more
    counted: str = "the cloudburst cluster"  # where in_use comes from

    @property
    def free(self) -> float:
        return max(0.0, self.value - self.in_use)

    @property
    def name(self) -> str:
        return "Fargate Spot" if self.code == SPOT else "Fargate On-Demand"


def read_quota(region: str | None, profile: str | None, cluster: str, *, spot: bool) -> Quota | None:
    """The vCPU quota and what the cluster uses of it; None when Service Quotas cannot be read."""
    code = SPOT if spot else ON_DEMAND
    try:
        found = client("service-quotas", region, profile).get_service_quota(ServiceCode="fargate", QuotaCode=code)
        value = float(found["Quota"]["Value"])
    except Exception:
        return None
    ecs: Any = client("ecs", region, profile)
    in_cluster = 0.0
    arns: list[str] = []
    for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus="RUNNING"):
        arns += page.get("taskArns", [])
    for start in range(0, len(arns), 100):
        for task in ecs.describe_tasks(cluster=cluster, tasks=arns[start : start + 100]).get("tasks", []):
            in_cluster += int(task.get("cpu") or 1024) / 1024
    in_account = account_usage(region, profile, spot=spot)
    if in_account is not None and in_account >= in_cluster:
        return Quota(code, value, in_account, "the account (CloudWatch usage)")
    return Quota(code, value, in_cluster)


def account_usage(region: str | None, profile: str | None, *, spot: bool) -> float | None:
    """Fargate vCPUs in use across the account (every cluster), from the usage metric of the last
    five minutes; None when it cannot be read or has no data."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        found = client("cloudwatch", region, profile).get_metric_statistics(
            Namespace="AWS/Usage",
            MetricName="ResourceCount",
            Dimensions=[
                {"Name": "Service", "Value": "Fargate"},
                {"Name": "Type", "Value": "Resource"},
                {"Name": "Resource", "Value": "vCPU"},
                {"Name": "Class", "Value": "Standard/Spot" if spot else "Standard/OnDemand"},
            ],
            StartTime=now - datetime.timedelta(minutes=5),
            EndTime=now,
            Period=60,
            Statistics=["Maximum"],
        )
    except Exception:
        return None
    points = sorted(found.get("Datapoints", []), key=lambda p: p["Timestamp"])
    return float(points[-1]["Maximum"]) if points else None


def fit_workers(quota: Quota, workers: int, cpu: float, *, on_short: str) -> tuple[int, str]:
    """How many workers fit, and a line for the user when that is fewer than asked."""
    wanted = workers * cpu
    if quota.value < cpu:
        raise ConfigurationError(
            f"the {quota.name} vCPU quota here is {quota.value:g}: not even one worker of cpu={cpu:g} fits. "
            f"Ask AWS for more with `cloudburst quota --request {max(16, math.ceil(wanted * 1.2))}` "
            "(new accounts start small), or use backend='local'"
        )
    if wanted <= quota.free:
        return workers, ""
    fits = int(quota.free // cpu)
    if fits < 1 or on_short == "fail":
        raise ConfigurationError(
            f"asked for {workers} workers × {cpu:g} vCPU = {wanted:g} vCPUs, but the {quota.name} quota is "
            f"{quota.value:g} with {quota.in_use:g} in use. Wait for running tasks, lower workers=, or ask for "
            f"more with `cloudburst quota --request {math.ceil((quota.in_use + wanted) * 1.2)}`"
        )
    waves = math.ceil(workers / fits)
    return fits, (
        f"cloudburst: asked for {workers} workers × {cpu:g} vCPU; the {quota.name} quota is {quota.value:g} vCPUs "
        f"({quota.in_use:g} in use): running {fits} workers, the work flows through them in about {waves} waves. "
        f"`cloudburst quota --request {math.ceil((quota.in_use + wanted) * 1.2)}` asks for more"
    )


def request_increase(region: str | None, profile: str | None, *, spot: bool, value: float) -> dict[str, Any]:
    sq: Any = client("service-quotas", region, profile)
    code = SPOT if spot else ON_DEMAND
    with translate("Service Quotas", "RequestServiceQuotaIncrease", code):
        made: dict[str, Any] = sq.request_service_quota_increase(
            ServiceCode="fargate", QuotaCode=code, DesiredValue=float(value)
        )["RequestedQuota"]
    return made


def pending_requests(region: str | None, profile: str | None) -> list[dict[str, Any]]:
    sq: Any = client("service-quotas", region, profile)
    found: list[dict[str, Any]] = []
    for code in (ON_DEMAND, SPOT):
        try:
            history = sq.list_requested_service_quota_change_history_by_quota(ServiceCode="fargate", QuotaCode=code)
        except Exception:
            continue
        found += [r for r in history.get("RequestedQuotas", []) if r.get("Status") in ("PENDING", "CASE_OPENED")]
    return found
