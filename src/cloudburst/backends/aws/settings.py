"""The AWS backend's settings: its keys, registered with the backend registry, and the resolved ``FargateSettings``.

Every value comes through the one resolution of :func:`cloudburst.config.userconfig.lookup`
(call, then ``CLOUDBURST_<KEY>``, then the config file, then the key's default) and is checked
by its key, before any AWS call; so ``cloudburst config`` shows what the backend runs with.
What ``cloudburst setup`` provides (bucket, cluster, network, roles) is reported together when missing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ...config.userconfig import Key, as_arch, as_flag, as_ids, choice, number, optional_text, resolve, text
from ...errors import ConfigurationError, NotSetUpError
from .sizes import VALID_SIZES

__all__ = ["KEYS", "OPTION_NAMES", "FargateSettings", "fargate_cpu"]


@dataclass(frozen=True)
class FargateSettings:
    """What a Fargate job runs with; every field is the setting of the same name (see ``KEYS``)."""

    bucket: str
    cluster: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    execution_role_arn: str
    worker_boundary_arn: str  # every job role carries it: the most a job's workers may do
    log_group: str
    region: str | None
    profile: str | None
    image: str  # "" builds (or finds) this environment's image; "python" installs it as workers start
    requirements: str  # requirements*.txt, uv.lock or pyproject.toml; "" snapshots what is installed
    build_role_arn: str  # CodeBuild's role, to build the image when none is named
    ecr_repository: str  # where built images go
    assign_public_ip: bool
    spot: bool
    arch: str
    ephemeral_storage: int
    local_workers: int
    detached: bool
    keep: bool
    client_timeout: float
    lease_seconds: float
    poll_interval: float
    max_cost_per_job: float
    debug: bool
    cost_alert_threshold: float
    auto_quota_request: bool
    on_quota_short: str
    tags: Mapping[str, str]
    secrets: Mapping[str, str]  # {"NAME": "ssm:/path"}: ECS secrets, not overrides
    kms_key: str  # a customer-managed KMS key for job keys (setup --kms-key); "" is SSM's aws/ssm

    @classmethod
    def resolve(cls, options: Mapping[str, object], environ: Mapping[str, str] | None = None) -> FargateSettings:
        """Each field through the one resolution: call ``options``, ``CLOUDBURST_*`` variables, file, default."""
        values = resolve(options, (f.name for f in fields(cls)), environ)
        return cls(**{name: _frozen(value.value) for name, value in values.items()})

    def require_setup(self) -> None:
        """Refuse, naming every missing piece and ``cloudburst setup``, when the account is not set up."""
        missing = [
            name
            for name in ("bucket", "cluster", "subnets", "security_groups", "execution_role_arn", "worker_boundary_arn")
            if not getattr(self, name)
        ]
        if missing:
            raise NotSetUpError(
                f"backend='fargate' is not set up: no {', '.join(missing)} configured. Run `cloudburst setup` once "
                "for this AWS account and region (or pass them, e.g. Executor(..., bucket='my-bucket')), or use "
                "backend='local'."
            )


def _frozen(value: Any) -> Any:
    """Lists (of ids) as tuples: the settings object is frozen."""
    return tuple(value) if isinstance(value, list) else value


def fargate_cpu(name: str, value: object) -> float:
    """A Fargate worker size in vCPUs (0.25, 0.5, 1, 2, 4, 8 or 16)."""
    valid = [units / 1024 for units in VALID_SIZES]
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if number not in valid:
        listed = ", ".join(f"{v:g}" for v in valid)
        raise ConfigurationError(f"{name}={value!r} is not a Fargate worker size; use one of {listed} (vCPUs)")
    return number


def _optional_text(name: str, value: object) -> str:
    """A string that may be empty (the default: e.g. no image named)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name}={value!r} must be a string")
    return value.strip()


def _disk_gib(name: str, value: object) -> int:
    """GiB of disk Fargate gives a task: 20 to 200, whole GiB (a fraction is dropped)."""
    return int(number(20, 200)(name, value))


def _mapping(value: object) -> Mapping[Any, Any] | None:
    """A mapping as given, or from a JSON object (how an environment variable or `config set` carries one)."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, Mapping) else None


def _tags(name: str, value: object) -> dict[str, str]:
    found = _mapping(value)
    if found is None:
        raise ConfigurationError(
            f"{name} must map tag names to values, e.g. {name}={{'project': 'x'}} (in CLOUDBURST_TAGS: JSON)"
        )
    return {str(k): str(v) for k, v in found.items()}


def _requirements_file(name: str, value: object) -> str:
    if value in (None, ""):
        return ""
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"requirements={str(value)!r} is not a file: name a requirements*.txt, uv.lock or pyproject.toml "
            "(or leave it out to install what this interpreter has installed)"
        )
    if not (path.name in ("uv.lock", "pyproject.toml") or path.suffix in (".txt", ".in")):
        raise ConfigurationError(
            f"requirements={str(value)!r} is not a requirements*.txt, uv.lock or pyproject.toml file"
        )
    return str(path.resolve())


_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_PATH = re.compile(r"^ssm:(/[A-Za-z0-9_.\-]+)+$")


#: where secrets live: the execution role (which ECS uses to read them) may read this path only
SECRETS_PATH = "/cloudburst/secrets/"


def _secrets(_name: str, value: object) -> dict[str, str]:
    """``{"NAME": "ssm:/path"}``, checked: names a process environment can hold, parameters by absolute path."""
    found = _mapping(value)
    if found is None:
        raise ConfigurationError(
            "secrets must map variable names to SSM parameters, e.g. secrets={'TOKEN': 'ssm:/app/token'} "
            "(in CLOUDBURST_SECRETS: JSON)"
        )
    out = {}
    for name, where in found.items():
        if (
            not isinstance(name, str)
            or not _SECRET_NAME.match(name)
            or name.upper().startswith(("CLOUDBURST_", "AWS_"))
        ):
            raise ConfigurationError(
                f"secrets: {name!r} is not a variable name workers can be given: use letters, digits and _, "
                "not starting with a digit, CLOUDBURST_ or AWS_"
            )
        if not isinstance(where, str) or not _SECRET_PATH.match(where):
            raise ConfigurationError(
                f"secrets: {name}={where!r} must name an SSM parameter by its full path, as 'ssm:/path/to/parameter'"
            )
        if not where.startswith(f"ssm:{SECRETS_PATH}"):
            # ECS reads secrets with the execution role, which may read this path and no other
            raise ConfigurationError(
                f"secrets: {name}={where!r} is outside {SECRETS_PATH}, the only path workers may read secrets from; "
                f"store it there (aws ssm put-parameter --type SecureString --name {SECRETS_PATH}... ) and name "
                f"'ssm:{SECRETS_PATH}...'"
            )
        out[name] = where
    return out


#: the AWS backend's settings (``cpu`` narrows the core's key to the sizes Fargate offers)
KEYS = (
    Key("region", "aws", optional_text, None, "AWS region (default: boto3's own resolution)"),
    Key("profile", "aws", optional_text, None, "AWS profile (default: boto3's own resolution)"),
    Key("bucket", "aws", text, "", "S3 bucket for job data (private, encrypted, expires after 7 days)"),
    Key("cluster", "aws", text, "", "ECS cluster with the FARGATE and FARGATE_SPOT capacity providers"),
    Key("subnets", "aws", as_ids, [], "subnets the workers run in"),
    Key("security_groups", "aws", as_ids, [], "security groups of the workers (egress only)"),
    Key("assign_public_ip", "aws", as_flag, True, "give workers a public IP (needed without a NAT gateway)"),
    Key("execution_role_arn", "aws", text, "", "role ECS uses to pull the image and write logs"),
    Key("worker_boundary_arn", "aws", text, "", "permissions boundary of every job's own role (made by setup)"),
    Key("task_role_arn", "aws", text, "", "no longer used: each job has its own role (setup removes it)"),
    Key("log_group", "aws", text, "/cloudburst/workers", "CloudWatch log group of the workers"),
    Key("build_role_arn", "aws", text, "", "role CodeBuild uses to build worker images"),
    Key("ecr_repository", "aws", text, "cloudburst", "ECR repository for worker images"),
    Key("kms_key", "aws", text, "", "KMS key (ARN) for job keys and the bucket; empty: AWS-managed keys"),
    Key("cache_days", "aws", number(1, 3650, whole=True), 30, "days the stage cache's entries live in the bucket"),
    Key(
        "image",
        "aws",
        _optional_text,
        "",
        "worker image (default: built from your environment; 'python': stock Python, packages installed at start)",
    ),
    Key(
        "requirements",
        "aws",
        _requirements_file,
        "",
        "requirements*.txt, uv.lock or pyproject.toml (default: installed)",
    ),
    Key("tags", "aws", _tags, {}, "tags on everything a job makes, e.g. {project = 'x'}"),
    Key("secrets", "aws", _secrets, {}, f"variables workers read from SSM, e.g. {{TOKEN = 'ssm:{SECRETS_PATH}token'}}"),
    Key("cpu", "defaults", fargate_cpu, 1, "vCPUs per worker"),
    Key("spot", "defaults", as_flag, False, "use Fargate Spot (up to 70% cheaper, can be interrupted)"),
    Key("arch", "defaults", as_arch, "x86_64", "x86_64 or arm64 (about 20% cheaper)"),
    Key("ephemeral_storage", "defaults", _disk_gib, 20, "GiB of disk per worker"),
    Key("client_timeout", "defaults", number(10, 86_400), 180.0, "seconds without the client before workers stop"),
    Key("local_workers", "defaults", number(0, 1024, whole=True), 0, "workers on this machine too"),
    Key("detached", "defaults", as_flag, False, "the job goes on after the client leaves (cloudburst.attach)"),
    Key("keep", "defaults", as_flag, False, "leave the job's queues and data in place after it ends"),
    Key("debug", "defaults", as_flag, False, "keep workers up for an hour of idleness, with ECS Exec"),
    Key("lease_seconds", "defaults", number(5, 43_200), 60.0, "seconds a worker holds a task before renewing"),
    Key("poll_interval", "defaults", number(0.05, 60), 2.0, "seconds between the client's looks at its workers"),
    Key("max_cost_per_job", "cost", number(0, 1e9), 0.0, "hard limit in USD per job (0: none)"),
    Key("cost_alert_threshold", "cost", number(0, 1e9), 0.0, "warn once when a job's cost passes this (0: none)"),
    Key("auto_quota_request", "quota", as_flag, False, "ask AWS for a larger vCPU quota without asking you"),
    Key(
        "on_quota_short",
        "quota",
        choice("fit", "fail"),
        "fit",
        "fit: run with the workers the quota allows; fail: refuse",
    ),
)

#: the Executor keywords of the fargate backend
OPTION_NAMES = frozenset(f.name for f in fields(FargateSettings))
