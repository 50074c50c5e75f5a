"""Every setting of cloudburst, and the one function that resolves it: :func:`lookup`.

Precedence, highest first: arguments of the call, ``CLOUDBURST_<KEY>`` environment
variables, ``config.toml`` in the user's config directory, the key's default. Every value,
wherever it comes from, is parsed and checked by its :class:`Key`. The core registers its own
keys below; each backend registers its keys through the backend registry
(:func:`cloudburst.backends.settings_keys`), so ``cloudburst config`` shows what runs.
``cloudburst config set KEY VALUE`` checks a value and saves it.

::

    [defaults]   workers, cpu, memory, idle_timeout         the core's, for cloud runs
    [aws] ...    the sections a backend's keys name          e.g. written by `cloudburst setup`
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..backends import settings_keys
from ..backends.cachebase import namespace
from ..errors import ConfigurationError, UnknownParameterError
from .options import parse_memory

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Key",
    "Value",
    "all_keys",
    "as_arch",
    "as_flag",
    "as_ids",
    "cache_dir",
    "choice",
    "config_path",
    "load",
    "lookup",
    "number",
    "optional_text",
    "resolve",
    "save",
    "set_value",
    "text",
    "unset_value",
]


def text(name: str, value: object) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value.strip()


def optional_text(name: str, value: object) -> str | None:
    """A string, or None for none."""
    return None if value in (None, "") else text(name, value)


def as_ids(name: str, value: object) -> list[str]:
    """A list of ids, from a list or a comma-separated string."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigurationError(f"{name} must be a comma-separated list of ids, e.g. subnet-0abc,subnet-0def")
    return items


def as_flag(name: str, value: object) -> bool:
    """True or false, also from the words an environment variable holds (yes/no, on/off, 1/0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigurationError(f"{name}={value!r} must be true or false")


def number(low: float, high: float, *, whole: bool = False) -> Callable[[str, object], float | int]:
    """A check for a number from ``low`` to ``high`` (a whole one with ``whole``), also given as a string."""

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


def _memory(name: str, value: object) -> str:
    parse_memory(value, name=name)
    return str(value)


def as_arch(name: str, value: object) -> str:
    """A CPU architecture: x86_64 or arm64 (amd64 and aarch64 are their other names)."""
    arch = str(value).lower().replace("amd64", "x86_64").replace("aarch64", "arm64")
    if arch not in ("x86_64", "arm64"):
        raise ConfigurationError(f"{name}={value!r} must be 'x86_64' or 'arm64'")
    return arch


def choice(*choices: str) -> Callable[[str, object], str]:
    """A check for one of ``choices``."""

    def check(name: str, value: object) -> str:
        if value not in choices:
            raise ConfigurationError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return str(value)

    return check


@dataclass(frozen=True)
class Key:
    """One setting: its name, the file section it is saved in, its check (parse and validate), default, help."""

    name: str
    section: str
    check: Callable[[str, object], Any]
    default: Any
    help: str

    def narrowed(self, other: Key) -> Key:
        """This core key with a backend's narrower check run first (its message names what that backend offers)."""
        outer, inner = self.check, other.check
        return replace(self, check=lambda name, value: outer(name, inner(name, value)))


#: the core's own keys; a backend registers the rest (or narrows these) through the backend registry
_CORE_KEYS = (
    Key("workers", "defaults", number(1, 100_000, whole=True), 10, "workers of a cloud run"),
    Key("cpu", "defaults", number(0.001, 1024), 1, "vCPUs per worker"),
    Key("memory", "defaults", _memory, "2GB", "memory per worker"),
    Key("idle_timeout", "defaults", number(1, 86_400), 120, "seconds before an idle worker stops"),
    Key("cache_namespace", "stages", namespace, "default", "stage cache shared by the runs that name it"),
)


def all_keys() -> dict[str, Key]:
    """Every setting: the core's, then each registered backend's (which may narrow a core key's check)."""
    found = {key.name: key for key in _CORE_KEYS}
    for key in settings_keys():
        if not isinstance(key, Key):
            raise ConfigurationError(f"a backend registered {key!r} as a setting; settings are userconfig.Key")
        found[key.name] = found[key.name].narrowed(key) if key.name in found else key
    return found


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
    known = all_keys()
    key = known.get(name)
    if key is None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownParameterError(f"{where}unknown setting {name!r}{hint}; known: {', '.join(sorted(known))}")
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
    """A setting's effective value and where it came from."""

    name: str
    value: Any
    source: str  # "call", "env CLOUDBURST_X", "file PATH" or "default"


def lookup(
    name: str,
    call: Mapping[str, Any] | None = None,
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Value:
    """The one resolution of a setting: the call, else ``CLOUDBURST_<KEY>``, else the file, else the default.

    A call that names a key with ``None`` asks for its default. Every value is checked by the key.
    """
    key = _key(name)
    if call is not None and name in call:
        given = call[name]
        return Value(name, key.default if given is None else key.check(name, given), "call")
    env_name = f"CLOUDBURST_{name.upper()}"
    raw = (os.environ if environ is None else environ).get(env_name)
    if raw not in (None, ""):
        try:
            return Value(name, key.check(name, raw), f"env {env_name}")
        except ConfigurationError as exc:
            raise ConfigurationError(f"environment variable {env_name}: {exc}") from exc
    file_values = load() if file_values is None else file_values
    if name in file_values:
        return Value(name, file_values[name], f"file {config_path()}")
    return Value(name, key.default, "default")


def resolve(
    call: Mapping[str, Any] | None = None,
    names: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Value]:
    """The settings ``names`` (default: every setting) with their sources, through :func:`lookup`."""
    file_values = load()
    return {name: lookup(name, call, file_values, environ) for name in (all_keys() if names is None else names)}
