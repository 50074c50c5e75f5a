"""What every set-up step shares: the account and region it works in (``Context``), the report it adds
its steps to, and the names and rules of what setup makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..clients import client, error_code, translate
from ..policies import Names

__all__ = ["Context", "Report", "Step", "lifecycle", "lifecycle_matches", "look_or_make", "policy_document", "record"]


TAG = {"Key": "cloudburst", "Value": "true"}
SECURITY_GROUP = "cloudburst-workers"
TLS_ONLY_SID = "CloudburstDenyWithoutTLS"
CLUSTER = "cloudburst"
LOG_RETENTION_DAYS = 30
ON_DEMAND_QUOTA = "L-3032A538"
SPOT_QUOTA = "L-36FBB829"
#: the rule that expires the stage cache's entries and blobs (``cache/``)
CACHE_RULE = "cloudburst-expire-stage-cache"
_RULES = {
    "Rules": [
        {
            "ID": "cloudburst-expire-job-data",
            "Filter": {"Prefix": "jobs/"},
            "Status": "Enabled",
            "Expiration": {"Days": 7},
        },
        {
            "ID": CACHE_RULE,  # days: the cache_days setting, set in lifecycle()
            "Filter": {"Prefix": "cache/"},
            "Status": "Enabled",
            "Expiration": {"Days": 30},
        },
        {
            "ID": "cloudburst-expire-build-contexts",
            "Filter": {"Prefix": "builds/"},
            "Status": "Enabled",
            "Expiration": {"Days": 7},
        },
        {
            "ID": "cloudburst-expire-environment-bundles",  # made again by the next job that needs one
            "Filter": {"Prefix": "envs/"},
            "Status": "Enabled",
            "Expiration": {"Days": 30},
        },
        {
            "ID": "cloudburst-abort-incomplete-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
    ]
}


def lifecycle(cache_days: int) -> dict[str, Any]:
    """The bucket's lifecycle rules: job data and build contexts expire after 7 days, the stage cache after
    ``cache_days`` (the setting), environment bundles after 30, unfinished uploads after 1."""
    rules = [dict(rule) for rule in _RULES["Rules"]]
    for rule in rules:
        if rule["ID"] == CACHE_RULE:
            rule["Expiration"] = {"Days": cache_days}
    return {"Rules": rules}


def lifecycle_matches(current: list[dict[str, Any]], wanted: dict[str, Any]) -> bool:
    """Whether every wanted rule is in place, with its prefix and its days (other rules may be there too)."""
    by_id = {rule.get("ID"): rule for rule in current}
    return all(
        rule["ID"] in by_id
        and by_id[rule["ID"]].get("Filter", {}).get("Prefix", "") == rule["Filter"]["Prefix"]
        and by_id[rule["ID"]].get("Expiration") == rule.get("Expiration")
        and by_id[rule["ID"]].get("Status") == "Enabled"
        for rule in wanted["Rules"]
    )


ECR_LIFECYCLE = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "keep the 20 newest worker images",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20},
            "action": {"type": "expire"},
        }
    ]
}


@dataclass
class Step:
    """One step's outcome: what it looked at, its status, and a fix for a problem."""

    name: str
    status: str  # "found", "made", "repaired", "ok", "problem", "removed", "kept", "info"
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        mark = {"found": "✓", "ok": "✓", "made": "+", "repaired": "~", "removed": "-", "problem": "✗"}.get(
            self.status, "·"
        )
        text = f"{mark} {self.name}: {self.status}" + (f" — {self.detail}" if self.detail else "")
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    """The steps of one setup, doctor or teardown, echoed as they are added, and the settings found."""

    steps: list[Step] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    echo: Callable[[str], None] = print

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        self.echo(step.line())
        return step

    @property
    def changed(self) -> bool:
        return any(s.status in ("made", "repaired", "removed") for s in self.steps)

    @property
    def problems(self) -> list[Step]:
        return [s for s in self.steps if s.status == "problem"]


class Context:
    """The account, region and credentials the steps work in, and the names of what setup makes there."""

    def __init__(self, region: str | None, profile: str | None) -> None:
        self.profile = profile
        sts: Any = client("sts", region, profile)
        self.region: str = region or sts.meta.region_name
        with translate("STS", "GetCallerIdentity"):
            identity = sts.get_caller_identity()
        self.account: str = identity["Account"]
        self.identity: str = identity["Arn"]
        self.partition: str = self.identity.split(":")[1]
        self.kms_key = ""  # the customer-managed key's ARN; "" for AWS-managed keys (aws/ssm, SSE-S3)

    def client(self, service: str) -> Any:
        return client(service, self.region, self.profile)

    @property
    def names(self) -> Names:
        return Names(self.account, self.region, self.partition)

    @property
    def bucket(self) -> str:
        return self.names.bucket

    # IAM is global and each role's policy names one region's resources: one pair of roles per region.
    @property
    def execution_role(self) -> str:
        return f"cloudburst-execution-{self.region}"

    @property
    def old_task_role(self) -> str:
        """The one task role all jobs shared before each job had its own: removed by setup and teardown."""
        return f"cloudburst-task-{self.region}"

    @property
    def build_role(self) -> str:
        return f"cloudburst-build-{self.region}"


def record(report: Report, name: str, status: str, repaired: list[str], fix: bool) -> None:
    """Add a found, made or repaired resource's step; with ``fix`` off, what needs repair is a problem."""
    if repaired and status == "found":
        if fix:
            report.add(Step(name, "repaired", "; ".join(repaired)))
        else:
            report.add(Step(name, "problem", "not " + "; not ".join(repaired), "run `cloudburst setup` to repair it"))
    else:
        report.add(Step(name, status, "private, encrypted, expiring" if name.startswith("bucket") else ""))


def look_or_make(
    report: Report,
    label: str,
    fix: bool,
    look: Callable[[], Any],
    make: Callable[[], Any],
    *,
    missing: str,
    calls: tuple[str, str, str, str],
) -> tuple[Any, str] | None:
    """(the resource, "found" or "made"), or None when it is missing and not to be made (then a problem is
    reported). ``look`` raises an error with code ``missing`` when there is none; ``calls`` is (service,
    look operation, make operation, resource name), what an error from them is translated with."""
    service, looking, making, name = calls
    try:
        return look(), "found"
    except Exception as exc:
        if error_code(exc) != missing:
            with translate(service, looking, name):
                raise
    if not fix:
        report.add(Step(label, "problem", "missing", "run `cloudburst setup`"))
        return None
    with translate(service, making, name):
        return make(), "made"


def policy_document(value: Any) -> Any:
    """A policy document as IAM returns it: a dict, or JSON (URL-encoded by some clients)."""
    if isinstance(value, str):
        return json.loads(unquote(value) if value.startswith("%7B") else value)
    return value
