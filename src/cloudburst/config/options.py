"""Parameter validation: every value a user can pass is checked here, before anything starts.

Rules follow submitit: parameters come from a declared set, unknown names are
refused with the list of valid ones, and each bad value gets a message that
names the fix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import ConfigurationError, UnknownParameterError

__all__ = [
    "ExecutorOptions",
    "check_known",
    "default_workers",
    "parse_memory",
]

_MEMORY_UNITS: dict[str, float] = {
    "": 1024**3,  # a bare number is gibibytes: memory=4 means 4 GiB
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "ki": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
    "ti": 1024**4,
}
#: a bare number above this many GiB is refused as a likely mistake (memory=2048 meant MiB)
_MAX_BARE_GIB = 1024
_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: object, *, name: str = "memory") -> int:
    """Return a memory amount in MiB.

    Accepts ``"2GB"``, ``"2 GB"``, ``"2GiB"``, ``"2g"``, ``"512MB"``, ``"512Mi"`` and plain
    numbers of GiB (``2``, ``0.5``) up to 1,024: a larger bare number is refused, since it was
    almost surely meant as MiB. As on AWS, GB and GiB both mean 1024³ bytes.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{name}={value!r} is not a memory size; write e.g. {name}='2GB'")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = _MEMORY_RE.match(value)
        if not match:
            raise ConfigurationError(
                f"{name}={value!r} is not a memory size; write a number and a unit, e.g. {name}='2GB', '2 GiB', '512MB'"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ConfigurationError(
            f"{name} must be a string such as '2GB' or a number of GiB, not {type(value).__name__}"
        )
    if unit not in _MEMORY_UNITS:
        raise ConfigurationError(
            f"{name}={value!r}: unknown unit {unit!r}; use MB, GB (or MiB, GiB), e.g. {name}='2GB'"
        )
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name}={value!r} must be a positive size, e.g. {name}='2GB'")
    if unit == "" and number > _MAX_BARE_GIB:
        # No machine cloudburst runs on gives a worker a TiB: the number was surely meant as MiB.
        raise ConfigurationError(
            f"{name}={value!r}: a bare number means GiB, so this asks for {number:,g} GiB, more than any worker "
            f"gets; did you mean {name}='{number:g}MB' (that is '{number / 1024:.3g}GB')?"
        )
    mib = number * _MEMORY_UNITS[unit] / 1024**2
    if mib < 1:
        raise ConfigurationError(f"{name}={value!r} is less than 1 MiB; did you mean {name}='{number:g}GB'?")
    return round(mib)


def default_workers() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def check_known(given: Iterable[str], valid: Iterable[str], *, what: str) -> None:
    """Refuse parameter names that are not in ``valid``, listing the valid ones."""
    valid_sorted = sorted(set(valid))
    unknown = [name for name in given if name not in valid_sorted]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid_sorted, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UnknownParameterError(
        f"{what} got unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
        f"valid parameters are: {', '.join(valid_sorted)}"
    )


def _positive_int(value: object, name: str, *, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name}={value!r} must be a whole number; {hint}")
    if value <= 0:
        raise ConfigurationError(f"{name}={value!r} must be at least 1; {hint}")
    return value


def _non_negative_number(value: object, name: str, *, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds; {hint}")
    if value < 0:
        raise ConfigurationError(f"{name}={value!r} must not be negative; {hint}")
    return float(value)


@dataclass(frozen=True)
class ExecutorOptions:
    """The validated settings of one executor. Built by :meth:`from_user`."""

    workers: int
    backend: str = "local"
    cpu: float = 1
    memory_mib: int | None = None
    retries: int = 2
    seed: int | None = None
    progress: bool | str = False
    idle_timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    backend_options: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_user(
        cls,
        *,
        workers: object,
        backend: object,
        cpu: object,
        memory: object,
        retries: object,
        seed: object,
        progress: object,
        idle_timeout: object,
        env: object,
        backend_options: Mapping[str, object],
    ) -> ExecutorOptions:
        if workers is None:
            n_workers = default_workers()
        else:
            n_workers = _positive_int(workers, "workers", hint="pass e.g. workers=8, or None for one per CPU")
        if not isinstance(backend, str):
            raise ConfigurationError(f"backend={backend!r} must be a backend name such as 'local'")
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not cpu > 0:
            raise ConfigurationError(f"cpu={cpu!r} must be a positive number of vCPUs, e.g. cpu=1 or cpu=0.5")
        memory_mib = None if memory is None else parse_memory(memory)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"retries={retries!r} must be a whole number ≥ 0 (how often a task whose worker died is run again)"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigurationError(f"seed={seed!r} must be a non-negative integer, e.g. seed=42, or None")
        if progress not in (True, False, "auto"):
            raise ConfigurationError(f"progress={progress!r} must be True, False or 'auto'")
        timeout = (
            None
            if idle_timeout is None
            else _non_negative_number(
                idle_timeout, "idle_timeout", hint="e.g. idle_timeout=60, or None to never retire"
            )
        )
        if env is None:
            env = {}
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ConfigurationError("env must map variable names to string values, e.g. env={'OMP_NUM_THREADS': '1'}")
        return cls(
            workers=n_workers,
            backend=backend,
            cpu=float(cpu),
            memory_mib=memory_mib,
            retries=retries,
            seed=seed,
            progress=progress,
            idle_timeout=timeout,
            env=dict(env),
            backend_options=dict(backend_options),
        )
