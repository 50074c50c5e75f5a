"""The user's persisted configuration: ``config.toml`` in the user's config directory.

Precedence, highest first: arguments of the call, ``CLOUDBURST_<KEY>`` environment
variables, the file, the defaults below. ``cloudburst config`` shows every value and
where it came from; ``cloudburst config set KEY VALUE`` checks a value and saves it.

::

    [aws]        region, profile, bucket, cluster, subnets, ...   written by `cloudburst setup`
    [defaults]   workers, cpu, memory, spot, idle_timeout, ...    for cloud runs
    [cost]       max_cost_per_job, cost_alert_threshold
    [quota]      auto_quota_request, on_quota_short
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, UnknownParameterError
from .options import parse_memory

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "KEYS",
    "Key",
    "Value",
    "as_arch",
    "as_flag",
    "as_ids",
    "cache_dir",
    "config_path",
    "fargate_cpu",
    "load",
    "lookup",
    "number",
    "resolve",
    "save",
    "set_value",
    "unset_value",
]


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value.strip()


def _optional_text(name: str, value: object) -> str | None:
    return None if value in (None, "") else _text(name, value)


def as_ids(name: str, value: object) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigurationError(f"{name} must be a comma-separated list of ids, e.g. subnet-0abc,subnet-0def")
    return items


def as_flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigurationError(f"{name}={value!r} must be true or false")


def number(low: float, high: float, *, whole: bool = False) -> Callable[[str, object], float | int]:
    def check(name: str, value: object) -> float | int:
        try:
            number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
        except ValueError:
            number = math.nan
        if not (low <= number <= high) or (whole and number != int(number)):
            kind = "a whole number" if whole else "a number"
            raise ConfigurationError(f"{name}={value!r} must be {kind} from {low:g} to {high:g}")
        return int(number) if whole else number

    return check


def fargate_cpu(name: str, value: object) -> float:
    """A Fargate worker size in vCPUs (0.25, 0.5, 1, 2, 4, 8 or 16)."""
    from ..backends.aws.sizes import VALID_SIZES

    valid = [units / 1024 for units in VALID_SIZES]
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if number not in valid:
        listed = ", ".join(f"{v:g}" for v in valid)
        raise ConfigurationError(f"{name}={value!r} is not a Fargate worker size; use one of {listed} (vCPUs)")
    return number


def _memory(name: str, value: object) -> str:
    parse_memory(value, name=name)
    return str(value)


def as_arch(name: str, value: object) -> str:
    arch = str(value).lower().replace("amd64", "x86_64").replace("aarch64", "arm64")
    if arch not in ("x86_64", "arm64"):
        raise ConfigurationError(f"{name}={value!r} must be 'x86_64' or 'arm64'")
    return arch


def _choice(*choices: str) -> Callable[[str, object], str]:
    def check(name: str, value: object) -> str:
        if value not in choices:
            raise ConfigurationError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return str(value)

    return check


@dataclass(frozen=True)
class Key:
    name: str
    section: str
    check: Callable[[str, object], Any]
    default: Any
    help: str


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("region", "aws", _optional_text, None, "AWS region (default: boto3's own resolution)"),
        Key("profile", "aws", _optional_text, None, "AWS profile (default: boto3's own resolution)"),
        Key("bucket", "aws", _text, "", "S3 bucket for job data (private, encrypted, expires after 7 days)"),
        Key("cluster", "aws", _text, "", "ECS cluster with the FARGATE and FARGATE_SPOT capacity providers"),
        Key("subnets", "aws", as_ids, [], "subnets the workers run in"),
        Key("security_groups", "aws", as_ids, [], "security groups of the workers (egress only)"),
        Key("assign_public_ip", "aws", as_flag, True, "give workers a public IP (needed without a NAT gateway)"),
        Key("execution_role_arn", "aws", _text, "", "role ECS uses to pull the image and write logs"),
        Key("worker_boundary_arn", "aws", _text, "", "permissions boundary of every job's own role (made by setup)"),
        Key("task_role_arn", "aws", _text, "", "no longer used: each job has its own role (setup removes it)"),
        Key("log_group", "aws", _text, "/cloudburst/workers", "CloudWatch log group of the workers"),
        Key("build_role_arn", "aws", _text, "", "role CodeBuild uses to build worker images"),
        Key("ecr_repository", "aws", _text, "cloudburst", "ECR repository for worker images"),
        Key("kms_key", "aws", _text, "", "KMS key (ARN) for job keys and the bucket; empty: AWS-managed keys"),
        Key(
            "image",
            "aws",
            _text,
            "",
            "worker image (default: built from your environment; 'python': stock Python, packages installed at start)",
        ),
        Key("requirements", "aws", _text, "", "requirements*.txt, uv.lock or pyproject.toml (default: installed)"),
        Key("workers", "defaults", number(1, 100_000, whole=True), 10, "workers of a cloud run"),
        Key("cpu", "defaults", fargate_cpu, 1, "vCPUs per worker"),
        Key("memory", "defaults", _memory, "2GB", "memory per worker"),
        Key("spot", "defaults", as_flag, False, "use Fargate Spot (up to 70% cheaper, can be interrupted)"),
        Key("arch", "defaults", as_arch, "x86_64", "x86_64 or arm64 (about 20% cheaper)"),
        Key("idle_timeout", "defaults", number(1, 86_400), 120, "seconds before an idle worker stops"),
        Key("client_timeout", "defaults", number(10, 86_400), 180, "seconds without the client before workers stop"),
        Key("local_workers", "defaults", number(0, 1024, whole=True), 0, "workers on this machine too"),
        Key("max_cost_per_job", "cost", number(0, 1e9), 0, "hard limit in USD per job (0: none)"),
        Key("cost_alert_threshold", "cost", number(0, 1e9), 0, "warn once when a job's cost passes this (0: none)"),
        Key("auto_quota_request", "quota", as_flag, False, "ask AWS for a larger vCPU quota without asking you"),
        Key(
            "on_quota_short",
            "quota",
            _choice("fit", "fail"),
            "fit",
            "fit: run with the workers the quota allows; fail: refuse",
        ),
    ]
}


def config_path() -> Path:
    """``$CLOUDBURST_CONFIG_DIR/config.toml``, else the user's config directory."""
    folder = os.environ.get("CLOUDBURST_CONFIG_DIR")
    if not folder:
        import platformdirs

        folder = platformdirs.user_config_dir("cloudburst")
    return Path(folder) / "config.toml"


def cache_dir() -> Path:
    """``$CLOUDBURST_CACHE_DIR``, else the user's cache directory: prices, wheel checks."""
    folder = os.environ.get("CLOUDBURST_CACHE_DIR")
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("cloudburst")
    return Path(folder)


def _key(name: str, where: str = "") -> Key:
    """The setting ``name``; an unknown name is refused with the closest known one and the full list."""
    key = KEYS.get(name)
    if key is None:
        close = difflib.get_close_matches(name, KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownParameterError(f"{where}unknown setting {name!r}{hint}; known: {', '.join(sorted(KEYS))}")
    return key


def _read(path: Path) -> dict[str, Any]:
    """The file's values, flat and unchecked; an absent file is empty."""
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not valid TOML ({exc}); fix it or delete it and run `cloudburst setup`"
        ) from exc
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigurationError(f"{path}: {section!r} must be a [section]")
        flat.update(values)
    return flat


def load(path: Path | None = None) -> dict[str, Any]:
    """The file's values, flat (``{"bucket": ...}``) and checked; an absent file is empty."""
    path = path or config_path()
    flat = _read(path)
    for name, value in flat.items():
        key = _key(name, f"{path}: ")
        try:
            flat[name] = key.check(name, value)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{path}: {exc}; change it with `cloudburst config set {name} VALUE`, or remove it with "
                f"`cloudburst config unset {name}`"
            ) from exc
    return flat


def save(values: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write ``values`` (checked) as TOML, grouped in sections; atomically."""
    import tomli_w

    path = path or config_path()
    grouped: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if value is None:
            continue
        key = _key(name, f"{path}: ")
        grouped.setdefault(key.section, {})[name] = key.check(name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# cloudburst settings: `cloudburst config` shows them, `cloudburst config set` changes them\n")
    with open(tmp, "ab") as fh:
        tomli_w.dump(grouped, fh)
    tmp.replace(path)
    return path


def set_value(name: str, raw: str, path: Path | None = None) -> Any:
    """Check ``raw`` as the value of setting ``name`` and save it; returns the value saved."""
    value = _key(name).check(name, raw)
    values = _read(path or config_path())  # unchecked: setting a good value repairs a bad one
    values[name] = value
    save(values, path)
    return value


def unset_value(name: str, path: Path | None = None) -> None:
    """Remove setting ``name`` from the file, even if its value there is not valid."""
    _key(name)
    values = _read(path or config_path())
    values.pop(name, None)
    save(values, path)


@dataclass(frozen=True)
class Value:
    name: str
    value: Any
    source: str  # "call", "env CLOUDBURST_X", "file PATH" or "default"


def lookup(name: str, call: Mapping[str, Any] | None = None, file_values: Mapping[str, Any] | None = None) -> Value:
    """One setting and where it came from."""
    key = KEYS[name]
    if call and call.get(name) is not None:
        return Value(name, key.check(name, call[name]), "call")
    env_name = f"CLOUDBURST_{name.upper()}"
    raw = os.environ.get(env_name)
    if raw not in (None, ""):
        try:
            return Value(name, key.check(name, raw), f"env {env_name}")
        except ConfigurationError as exc:
            raise ConfigurationError(f"environment variable {env_name}: {exc}") from exc
    file_values = load() if file_values is None else file_values
    if name in file_values:
        return Value(name, file_values[name], f"file {config_path()}")
    return Value(name, key.default, "default")


def resolve(call: Mapping[str, Any] | None = None) -> dict[str, Value]:
    """Every setting with its source."""
    file_values = load()
    return {name: lookup(name, call, file_values) for name in KEYS}
