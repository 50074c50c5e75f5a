"""The Fargate backend's settings: call arguments first, then ``CLOUDBURST_*`` environment variables, then defaults.

Every value is checked here, before any AWS call; what ``cloudburst setup``
provides (bucket, cluster, network, roles) is reported together when missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ...errors import ConfigurationError, NotSetUpError

__all__ = ["OPTION_NAMES", "FargateSettings"]


@dataclass(frozen=True)
class FargateSettings:
    bucket: str = ""
    cluster: str = ""
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    execution_role_arn: str = ""
    worker_boundary_arn: str = ""  # every job role carries it: the most a job's workers may do
    log_group: str = "/cloudburst/workers"
    region: str | None = None
    profile: str | None = None
    image: str = ""  # "" builds (or finds) this environment's image; "python" installs it as workers start
    requirements: str = ""  # requirements*.txt, uv.lock or pyproject.toml; "" snapshots what is installed
    assign_public_ip: bool = True
    spot: bool = False
    arch: str = "x86_64"
    ephemeral_storage: int = 20
    local_workers: int = 0
    detached: bool = False
    keep: bool = False
    client_timeout: float = 180.0
    lease_seconds: float = 60.0
    poll_interval: float = 2.0
    max_cost_per_job: float = 0.0
    debug: bool = False
    cost_alert_threshold: float = 0.0
    tags: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # {"NAME": "ssm:/path"}: ECS secrets, not overrides
    kms_key: str = ""  # a customer-managed KMS key for job keys (setup --kms-key); "" is SSM's aws/ssm

    @classmethod
    def resolve(cls, options: Mapping[str, object], environ: Mapping[str, str] | None = None) -> FargateSettings:
        """Call options, then ``CLOUDBURST_*`` variables, then the user's config file, then defaults."""
        from ...config.userconfig import load

        environ = os.environ if environ is None else environ
        file_values = load()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in options:
                values[f.name] = options[f.name]
            elif (raw := environ.get(f"CLOUDBURST_{f.name.upper()}")) not in (None, ""):
                values[f.name] = raw
            elif file_values.get(f.name) not in (None, "", []):
                values[f.name] = file_values[f.name]
        return cls(**_checked(values))

    def require_setup(self) -> None:
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


OPTION_NAMES = frozenset(f.name for f in fields(FargateSettings))


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    from ...config.userconfig import as_arch, as_flag, as_ids, number

    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("assign_public_ip", "spot", "detached", "keep", "debug"):
            out[name] = as_flag(name, value)
        elif name in ("subnets", "security_groups"):
            out[name] = tuple(as_ids(name, value))
        elif name == "arch":
            out[name] = as_arch(name, value)
        elif name == "ephemeral_storage":
            out[name] = int(number(20, 200)(name, value))  # GiB of disk Fargate gives a task
        elif name == "local_workers":
            out[name] = int(number(0, 1024, whole=True)(name, value))
        elif name == "client_timeout":
            out[name] = number(10, 86400)(name, value)
        elif name == "lease_seconds":
            out[name] = number(5, 43200)(name, value)
        elif name == "poll_interval":
            out[name] = number(0.05, 60)(name, value)
        elif name in ("max_cost_per_job", "cost_alert_threshold"):
            out[name] = number(0, 1e9)(name, value)
        elif name == "tags":
            if not isinstance(value, Mapping):
                raise ConfigurationError("tags must map tag names to values, e.g. tags={'project': 'x'}")
            out[name] = {str(k): str(v) for k, v in value.items()}
        elif name == "requirements":
            out[name] = _requirements_file(value)
        elif name == "secrets":
            out[name] = _secrets(value)
        elif name in ("region", "profile"):
            out[name] = None if value is None else str(value)
        elif name == "image" and value is None:
            out[name] = ""  # the default: this environment's image
        else:
            if not isinstance(value, str):
                raise ConfigurationError(f"{name}={value!r} must be a string")
            out[name] = value
    return out


def _requirements_file(value: object) -> str:
    from pathlib import Path

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


def _secrets(value: object) -> dict[str, str]:
    """``{"NAME": "ssm:/path"}``, checked: names a process environment can hold, parameters by absolute path."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            "secrets must map variable names to SSM parameters, e.g. secrets={'TOKEN': 'ssm:/app/token'}"
        )
    out = {}
    for name, where in value.items():
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
