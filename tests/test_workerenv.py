"""The worker's wire environment (``protocol/workerenv.py``): one module names, writes and reads every variable."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path

import pytest

import cloudburst
from cloudburst.backends.base import WorkerSide
from cloudburst.backends.local import LocalStore
from cloudburst.backends.localqueue import MemoryQueue
from cloudburst.config.userconfig import all_keys
from cloudburst.protocol import workerenv
from cloudburst.protocol.sealing import job_tag
from cloudburst.protocol.serialize import Packer, Unpacker
from cloudburst.protocol.task import RESULT, TASK, ResultMessage, TaskMessage, decode, encode, seal_control
from cloudburst.protocol.workerenv import WireEnvironmentError, WorkerEnv, from_environ
from cloudburst.worker.loop import Worker

from .conftest import wait_until

SRC = Path(cloudburst.__file__).parent


def _every_field_set() -> WorkerEnv:
    """A WorkerEnv with every wire field away from its default, each value different."""
    values: dict[str, object] = {}
    for n, f in enumerate(dataclasses.fields(WorkerEnv)):
        if f.name == "user_env":
            continue
        kind = f.metadata["kind"]
        values[f.name] = {
            "str": f"value-{n} with spaces, = and 'quotes'",
            "int": 1000 + n,
            "int?": 2000 + n,
            "float": 0.5 + n,
            "float?": 1.25 + n,
            "bool": f.default is not True,
            "json-list": (f"/path/{n}", "", "ä"),
            "json-dict": {"a": str(n), "b": '{"nested": "json"}'},
        }[kind]
    return WorkerEnv(**values)  # type: ignore[arg-type]


def test_every_field_round_trips_through_the_environment() -> None:
    wire = _every_field_set()
    environ = wire.to_environ()
    assert len(environ) == len(workerenv.describe())  # one variable per field
    assert all(name.startswith("CLOUDBURST_") and isinstance(v, str) for name, v in environ.items())
    back = from_environ(environ)
    for f in dataclasses.fields(WorkerEnv):
        if f.name != "user_env":
            assert getattr(back, f.name) == getattr(wire, f.name), f.name


def test_defaults_are_not_written_and_read_back_as_defaults() -> None:
    wire = WorkerEnv(job_id="j1", backend="local")
    assert wire.to_environ() == {"CLOUDBURST_JOB_ID": "j1", "CLOUDBURST_BACKEND": "local"}
    assert from_environ(wire.to_environ()) == wire
    off = wire.replace(compress=False, idle_timeout=None, parent_pid=None)
    assert off.to_environ()["CLOUDBURST_COMPRESS"] == "0"
    assert from_environ(off.to_environ()).compress is False


def test_the_users_env_is_written_first_and_cannot_override_a_wire_variable() -> None:
    wire = WorkerEnv(job_id="j1", backend="local", user_env={"MY_VAR": "x", "CLOUDBURST_JOB_ID": "forged"})
    environ = wire.to_environ()
    assert environ["MY_VAR"] == "x" and environ["CLOUDBURST_JOB_ID"] == "j1"


@pytest.mark.parametrize(
    ("variable", "text", "words"),
    [
        ("CLOUDBURST_JOB_ID", None, "CLOUDBURST_JOB_ID is not set"),
        ("CLOUDBURST_BACKEND", None, "CLOUDBURST_BACKEND is not set"),
        ("CLOUDBURST_LEASE_SECONDS", "sixty", "CLOUDBURST_LEASE_SECONDS='sixty' cannot be read as float"),
        ("CLOUDBURST_WORKER_SLOTS", "2.5", "CLOUDBURST_WORKER_SLOTS='2.5' cannot be read as int"),
        ("CLOUDBURST_PARENT_PID", "pid1", "CLOUDBURST_PARENT_PID='pid1' cannot be read as int?"),
        ("CLOUDBURST_SUPERVISOR", "yes", "CLOUDBURST_SUPERVISOR='yes' cannot be read as bool"),
        ("CLOUDBURST_SYS_PATH", "/a:/b", "CLOUDBURST_SYS_PATH='/a:/b' cannot be read as json-list"),
        ("CLOUDBURST_SYS_PATH", '{"a": "b"}', "not a JSON list of strings"),
        ("CLOUDBURST_BACKEND_ARGS", '{"a": 1}', "not a JSON object of strings"),
    ],
)
def test_a_missing_or_garbled_variable_is_named(variable: str, text: str | None, words: str) -> None:
    environ = WorkerEnv(job_id="j1", backend="local").to_environ()
    environ.pop(variable, None)
    if text is not None:
        environ[variable] = text
    with pytest.raises(WireEnvironmentError, match=re.escape(words)):
        from_environ(environ)


def test_inherit_drops_wire_variables_and_keeps_the_rest() -> None:
    outer = {**_every_field_set().to_environ(), "PATH": "/bin", "CLOUDBURST_CONFIG_DIR": "/cfg"}
    assert workerenv.inherit(outer) == {"PATH": "/bin", "CLOUDBURST_CONFIG_DIR": "/cfg"}


def test_environ_writes_named_fields_only() -> None:
    assert workerenv.environ(worker_id="t1", memory_limit_mib=512) == {
        "CLOUDBURST_WORKER_ID": "t1",
        "CLOUDBURST_MEMORY_LIMIT_MIB": "512",
    }
    assert workerenv.variable("job_id") == "CLOUDBURST_JOB_ID"
    with pytest.raises(TypeError, match="not wire fields: nonsense"):
        workerenv.environ(nonsense=1)


def test_no_wire_variable_is_named_outside_its_module() -> None:
    """Every wire variable is written and read through workerenv: its name appears in no other source file.

    Four wire names are also the names of user settings (CLOUDBURST_REGION, ...: ``config.userconfig``); those
    may appear as settings."""
    settings = {f"CLOUDBURST_{name.upper()}" for name in all_keys()}
    wire_names = {name for name, _, _ in workerenv.describe()} - settings
    pattern = re.compile(r"CLOUDBURST_[A-Z0-9_]+")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "protocol" / "workerenv.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{path.relative_to(SRC)}:{lineno}: {m}" for m in pattern.findall(line) if m in wire_names]
    assert not found, "wire variables named outside protocol/workerenv.py:\n" + "\n".join(found)


def _parent_pid(_: int) -> int:
    return os.getppid()


def test_a_client_inside_a_worker_does_not_pass_its_wire_variables_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code running on a (Fargate) worker that makes a local executor: the outer worker's variables, such
    as CLOUDBURST_SUPERVISOR, must not turn the inner workers into supervisors or rename them."""
    outer = WorkerEnv(job_id="outer", backend="fargate", supervisor=True, slots=2, memory_limit_mib=64)
    for name, value in outer.to_environ().items():
        monkeypatch.setenv(name, value)
    with cloudburst.Executor(1, backend="local") as ex:
        assert list(ex.map(_parent_pid, range(2))) == [os.getpid()] * 2  # started by this client, no supervisor


# ---------------------------------------------------------------------------- a worker loop on a thread


def test_a_worker_loop_runs_on_a_thread_and_its_watchdogs_stop_only_the_loop(tmp_path: Path) -> None:
    """``Worker(side, env).run()`` from an object, on a thread: it runs a task, and when the job ends (or its
    memory limit would bite) its watchdogs stop the loop, not the process it shares."""
    store = LocalStore(tmp_path / "store")
    tasks, results = MemoryQueue(30), MemoryQueue(30)
    key, job_id = os.urandom(32), "thread-job"
    tag = job_tag(job_id)
    env = WorkerEnv(job_id=job_id, backend="local", job_key=key.hex(), control_period=0.1, memory_limit_mib=1)
    packer = Packer(store, inline_limit=env.inline_limit)
    task = TaskMessage(1, packer.function(abs), packer.pack([(-3,), (-4,)]), [0, 1])
    tasks.send_batch([encode(key, TASK, 1, task, job=tag)])
    worker = Worker(WorkerSide(store, tasks, results), env)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    found: list[object] = []

    def got_result() -> bool:
        for message in results.receive(10, wait=0.1):
            kind, body = decode(key, message.body, job=tag)
            if kind == RESULT:
                found.append(body)
        return bool(found)

    assert wait_until(got_result, timeout=30)
    result = found[0]
    assert isinstance(result, ResultMessage) and result.values is not None
    assert Unpacker(store, tmp_path / "cache").unpack(result.values) == [3, 4]
    store.put("control/state", seal_control(key, "state", {"stopped": True, "heartbeat": 1.0}, job=tag))
    thread.join(timeout=30)
    assert not thread.is_alive()  # the control watch stopped the loop; this process is still here to say so
    assert wait_until(
        lambda: not any(t.name in ("lease-keeper", "control-watch") for t in threading.enumerate()), timeout=30
    )  # its watchdogs end with it
