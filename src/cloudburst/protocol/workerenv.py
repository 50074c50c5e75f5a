"""The worker's wire environment: every ``CLOUDBURST_*`` variable a launcher sets for a worker, named once.

::

    client (job) ── WorkerEnv(job_id=..., job_key=..., ...) ── backend adds where to connect
        ── launcher: to_environ() ─► process / container environment ─► from_environ(os.environ) ── worker

A launcher writes a worker's variables only with :meth:`WorkerEnv.to_environ` (or :func:`environ` for a
few of them); a worker reads them only with :func:`from_environ`, which checks each and names a bad one.
Variables at their default are not written, so a worker's environment carries only what was set; a
launcher starts from :func:`inherit` (its own environment without wire variables), so a client that runs
inside a worker does not pass that worker's identity on to its own workers.

What a backend's worker side needs to connect goes in ``backend_args``, a JSON object of strings that the
backend writes in ``open_job`` and reads back in ``connect_worker`` (Fargate's: ``backends.aws.wire``); what
runs before a worker starts (the Fargate image's bootstrap, ``backends.aws.bootstrap``) has its own variables.
The user's settings (``CLOUDBURST_<SETTING>``, read by ``config``) are a different interface, not here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError

__all__ = ["PREFIX", "WireEnvironmentError", "WorkerEnv", "describe", "environ", "from_environ", "inherit", "variable"]

PREFIX = "CLOUDBURST_"


class WireEnvironmentError(ConfigurationError):
    """A worker's environment lacks a variable it needs, or holds one it cannot read."""


def _meta(name: str, kind: str, doc: str) -> dict[str, str]:
    """A field's variable ``CLOUDBURST_<name>``, its kind (a key of ``_KINDS``) and its meaning."""
    return {"variable": PREFIX + name, "kind": kind, "doc": doc}


def _wire(name: str, kind: str, doc: str, default: Any = dataclasses.MISSING) -> Any:
    """A field carried as the variable ``CLOUDBURST_<name>``."""
    return field(default=default, metadata=_meta(name, kind, doc))


@dataclass(frozen=True)
class WorkerEnv:
    """Everything a worker process learns from its launcher. One field per variable; see ``describe()``."""

    # the job (written by the client's job)
    job_id: str = _wire("JOB_ID", "str", "the job's id; sealed into every message (required)")
    backend: str = _wire("BACKEND", "str", "backend name or module:Class the worker loads (required)")
    job_key: str = _wire("JOB_KEY", "str", "the job's key, hex; or job_key_parameter names where it is", "")
    lease_seconds: float = _wire("LEASE_SECONDS", "float", "task lease length, extended while a task runs", 60.0)
    inline_limit: int = _wire("INLINE_LIMIT", "int", "results bigger than this many bytes go to the store", 256 << 10)
    idle_timeout: float | None = _wire("IDLE_TIMEOUT", "float?", "retire after this many idle seconds", None)
    client_timeout: float | None = _wire(
        "CLIENT_TIMEOUT", "float?", "stop after this many seconds without a client heartbeat", None
    )
    control_period: float = _wire("CONTROL_PERIOD", "float", "seconds between looks at the control record", 5.0)
    compress: bool = _wire("COMPRESS", "bool", "compress packed results", True)
    # the process (written by launchers and the supervisor)
    worker_id: str = _wire("WORKER_ID", "str", "this worker's name as its launcher gave it", "")
    parent_pid: int | None = _wire("PARENT_PID", "int?", "exit when this process (the starter) ends", None)
    sys_path: tuple[str, ...] = _wire("SYS_PATH", "json-list", "entries put in front of sys.path", ())
    slots: int = _wire("WORKER_SLOTS", "int", "worker processes to run here; more than 1 runs a supervisor", 1)
    supervisor: bool = _wire("SUPERVISOR", "bool", "run the supervisor even for one slot", False)
    supervised: bool = _wire("SUPERVISED", "bool", "a supervisor watches the job for this worker", False)
    memory_limit_mib: int | None = _wire("MEMORY_LIMIT_MIB", "int?", "memory limit of this worker, MiB", None)
    memory_cgroup: str = _wire("MEMORY_CGROUP", "str", "cgroup that enforces the memory limit (local)", "")
    # where the backend's worker side connects: each backend reads the fields it writes
    store_dir: str = _wire("STORE_DIR", "str", "the job's store, a directory (local)", "")
    queue_address: str = _wire("QUEUE_ADDRESS", "str", "the client's queue server socket (local)", "")
    backend_args: dict[str, str] = field(
        default_factory=dict,
        metadata=_meta("BACKEND_ARGS", "json-dict", "what else a backend's worker side needs (JSON object)"),
    )
    #: the user's ``env=`` variables, written first and as given; not wire variables, so not read back
    user_env: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_environ(self) -> dict[str, str]:
        """The variables to set for the worker: the user's ``env=``, then every wire field not at its default."""
        out = dict(self.user_env)
        for f in dataclasses.fields(self):
            if "variable" not in f.metadata:
                continue
            value = getattr(self, f.name)
            if _required(f) or value != _default(f):
                out[f.metadata["variable"]] = _KINDS[f.metadata["kind"]][0](value)
        return out

    def replace(self, **changes: Any) -> WorkerEnv:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _bool(text: str) -> bool:
    if text not in ("", "0", "1"):
        raise ValueError("not 1, 0 or empty")
    return text == "1"


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: parse(text) if text else None


def _json(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = json.loads(text) if text else kind()
        items = value.values() if isinstance(value, dict) else value
        if not isinstance(value, kind) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"not a JSON {'object' if kind is dict else 'list'} of strings")
        return tuple(items) if kind is list else value

    return parse


def _text(value: Any) -> str:
    return "" if value is None else str(value)


#: kind -> (write, read)
_KINDS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "str": (str, str),
    "int": (str, int),
    "float": (str, float),
    "int?": (_text, _optional(int)),
    "float?": (_text, _optional(float)),
    "bool": (lambda v: "1" if v else "0", _bool),
    "json-list": (lambda v: json.dumps(list(v)), _json(list)),
    "json-dict": (lambda v: json.dumps(dict(v), sort_keys=True), _json(dict)),
}
_FIELDS = {f.name: f for f in dataclasses.fields(WorkerEnv) if "variable" in f.metadata}
_NAMES = frozenset(f.metadata["variable"] for f in _FIELDS.values())


def from_environ(env: Mapping[str, str]) -> WorkerEnv:
    """Read a worker's variables from ``env``; raises :class:`WireEnvironmentError` naming a missing or bad one."""
    values: dict[str, Any] = {}
    for name, f in _FIELDS.items():
        variable = f.metadata["variable"]
        text = env.get(variable)
        if text is None:
            if _required(f):
                raise WireEnvironmentError(
                    f"{variable} is not set: a worker needs {f.metadata['doc']}; start workers through their "
                    "backend's launcher (`python -m cloudburst.worker` is not run by hand)"
                )
            continue
        try:
            values[name] = _KINDS[f.metadata["kind"]][1](text)
        except ValueError as exc:
            raise WireEnvironmentError(
                f"{variable}={text!r} cannot be read as {f.metadata['kind']} ({exc}); it should be {f.metadata['doc']}"
            ) from exc
    return WorkerEnv(**values)


def environ(**fields: Any) -> dict[str, str]:
    """The variables of just these fields, for a launcher that adds a few to an environment it copies."""
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise TypeError(f"not wire fields: {', '.join(unknown)}")
    return {_FIELDS[n].metadata["variable"]: _KINDS[_FIELDS[n].metadata["kind"]][0](v) for n, v in fields.items()}


def variable(name: str) -> str:
    """The variable that carries field ``name`` (``variable("job_id") == "CLOUDBURST_JOB_ID"``)."""
    return str(_FIELDS[name].metadata["variable"])


def inherit(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without wire variables: what a launcher passes on of its own environment."""
    return {k: v for k, v in env.items() if k not in _NAMES}


def describe() -> list[tuple[str, str, str]]:
    """``(variable, kind, meaning)`` of every wire variable, for docs and tests."""
    return [(f.metadata["variable"], f.metadata["kind"], f.metadata["doc"]) for f in _FIELDS.values()]
