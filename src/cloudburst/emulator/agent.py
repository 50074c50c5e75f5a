"""EMULATION: an ECS agent that turns the tasks RunTask creates in moto into real worker processes.

For every Fargate task in moto's ECS backend (shared in-process with the
server), the agent:

* keeps it PROVISIONING/PENDING for ``cold_start`` seconds (Fargate pulls the
  image for every task), then runs the container's command (``python`` is the
  agent's interpreter: the "image") with the container's environment, its
  secrets resolved from SSM, its overrides, the task's memory limit, the
  emulator's endpoint, and its task role's credentials (served as ECS serves them);
* runs only tasks whose task definition the emulator's own client registered;
* copies the process's output into CloudWatch Logs (``cloudburst/worker/<task id>``);
* on StopTask, sends SIGTERM and, after the stop timeout, SIGKILL;
* reports the task STOPPED with the process's exit code, ``stopCode`` and
  timestamps (``pullStartedAt``, ``startedAt``, ``stoppedAt``), as Fargate does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol

from ..backends.aws.bootstrap import ROOT_VARIABLE
from ..backends.aws.credentials import AWS_IDENTITY_VARIABLES, Credentials, CredentialsEndpoint
from ..protocol import workerenv
from .identities import RoleNotTrusted, assume
from .light import WORKER_COMMAND, SharedIdentity, ThreadTask

__all__ = ["EcsAgent", "EmulatedTask", "TaskProcess", "network_env"]

OOM_MARK = "OutOfMemoryError"
SPOT_REASON = "Your Spot Task was interrupted."
ECS_TASKS = "ecs-tasks.amazonaws.com"


class _FailedToStart(Exception):
    """What ECS reports as a task that could not start (a secret it could not read, say)."""


class TaskProcess(Protocol):
    """What runs a task's container: a process (``subprocess.Popen``), or threads that act as one."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class EmulatedTask:
    arn: str
    task: Any  # moto's Task
    account: str
    region: str
    launch_at: float
    proc: TaskProcess | None = None
    log_path: Path | None = None
    log_file: IO[bytes] | None = None
    log_offset: int = 0
    stop_requested_at: float | None = None
    stop_code: str = ""
    stopped_reason: str = ""
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]


class EcsAgent:
    """Watches moto's ECS tasks and runs each as a local worker process."""

    def __init__(
        self,
        env_for_workers: Mapping[str, str],
        work_dir: Path,
        *,
        cold_start: float = 0.0,
        interval: float = 0.05,
        stop_timeout: float = 2.0,
        registered: set[str] | None = None,
    ) -> None:
        self.env_for_workers = dict(env_for_workers)
        #: task definitions the emulator's own client registered; None: any (a test's own agent)
        self.registered = registered
        self.work_dir = work_dir
        self.cold_start = cold_start
        self.interval = interval
        self.stop_timeout = stop_timeout
        self.tasks: dict[str, EmulatedTask] = {}
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cloudburst-emulated-ecs-agent", daemon=True)
        self.on_start: list[Callable[[EmulatedTask], None]] = []
        #: the interpreter a "container" runs, and what its image adds to the environment
        self.python = sys.executable
        self.extra_env: dict[str, str] = {}
        #: light mode: tasks that start run their worker loops on threads of this process (light.py)
        self.light = False
        self._identities: dict[tuple[str, str], SharedIdentity] = {}  # task role, region -> shared clients

    def start(self) -> None:
        from moto.moto_api import state_manager

        # Tasks change state only when this agent says so.
        state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10**9})
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self.lock:
            running = [t for t in self.tasks.values() if t.proc is not None and t.proc.poll() is None]
        for t in running:
            assert t.proc is not None
            t.proc.kill()
            t.proc.wait()
        with self.lock:
            for t in self.tasks.values():
                endpoint = t.extra.pop("credentials", None)
                if endpoint is not None:
                    endpoint.close()
                self._flush_logs(t)
                if t.log_file is not None:
                    t.log_file.close()

    # ------------------------------------------------------------------ fault hooks
    def running(self) -> list[EmulatedTask]:
        with self.lock:
            return [t for t in self.tasks.values() if t.proc is not None and t.proc.poll() is None and not t.done]

    def kill(self, task_id: str, sig: int = signal.SIGKILL) -> None:
        with self.lock:
            t = self._find(task_id)
        if t.proc is not None:
            t.proc.send_signal(sig)

    def interrupt_spot(self, task_id: str) -> None:
        """A Fargate Spot interruption: SIGTERM now, stopCode SpotInterruption, SIGKILL after the timeout."""
        with self.lock:
            t = self._find(task_id)
            t.stop_code = "SpotInterruption"
            t.stopped_reason = SPOT_REASON
            t.stop_requested_at = time.monotonic()
        if t.proc is not None and t.proc.poll() is None:
            t.proc.send_signal(signal.SIGTERM)

    def pids(self) -> dict[str, int]:
        """The process ids of tasks that run as processes of their own (not those on threads of this one)."""
        with self.lock:
            return {t.task_id: t.proc.pid for t in self.tasks.values() if t.proc is not None and t.proc.pid > 0}

    def _find(self, task_id: str) -> EmulatedTask:
        for t in self.tasks.values():
            if t.task_id == task_id or t.arn == task_id:
                return t
        raise KeyError(f"no emulated task {task_id}")

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._tick()
            except Exception as exc:  # keep the agent alive; say what went wrong
                print(f"cloudburst emulator: ECS agent error: {exc!r}", file=sys.stderr)

    def _tick(self) -> None:
        from moto.ecs.models import ecs_backends

        now = time.monotonic()
        for account, regions in list(ecs_backends.items()):
            for region, backend in list(regions.items()):
                for tasks in list(backend.tasks.values()):
                    for arn, task in list(tasks.items()):
                        self._step(account, region, backend, arn, task, now)

    def _step(self, account: str, region: str, backend: Any, arn: str, task: Any, now: float) -> None:
        with self.lock:
            t = self.tasks.get(arn)
            if t is None:
                if task.desired_status != "RUNNING":
                    return
                t = EmulatedTask(arn, task, account, region, launch_at=now + self.cold_start)
                self.tasks[arn] = t
                task.created_at = _now()
                task.status = "PROVISIONING"
                task.pull_started_at = None
            if t.done:
                return
        if t.proc is None:
            if task.desired_status == "STOPPED":
                self._finish(t, None, stop_code=t.stop_code or "UserInitiated")
                return
            if now >= t.launch_at:
                try:
                    self._launch(t, backend)
                except _FailedToStart as exc:
                    t.stopped_reason = str(exc)
                    self._finish(t, None, stop_code="TaskFailedToStart")
            elif task.status == "PROVISIONING" and now >= t.launch_at - self.cold_start + min(1.0, self.cold_start):
                task.status = "PENDING"
                task.pull_started_at = _now()
            return
        self._flush_logs(t)
        code = t.proc.poll()
        if code is None:
            if task.desired_status == "STOPPED" and t.stop_requested_at is None:
                t.stop_requested_at = now
                t.stop_code = t.stop_code or "UserInitiated"
                task.status = "DEACTIVATING"
                task.stopping_at = _now()
                t.proc.send_signal(signal.SIGTERM)
            elif t.stop_requested_at is not None and now - t.stop_requested_at > self.stop_timeout:
                t.proc.kill()
            return
        self._finish(t, code, stop_code=t.stop_code or "EssentialContainerExited")

    def _launch(self, t: EmulatedTask, backend: Any) -> None:
        task = t.task
        if self.registered is not None and task.task_definition_arn not in self.registered:
            raise _FailedToStart(
                f"CannotStartTask: task definition {task.task_definition_arn} was not registered by this "
                "emulator's client; the emulated agent runs no other"
            )
        definition = backend.describe_task_definition(task.task_definition_arn)
        container = definition.container_definitions[0]
        env = self._container_env(t, definition, container)
        t.log_path = self.work_dir / f"{t.task_id}.log"
        t.log_file = open(t.log_path, "wb")  # noqa: SIM115 - closed when the task is finished
        command = list(container.get("command") or ["python", "-m", "cloudburst.worker"])
        if command[0] == "python":
            command[0] = self.python  # the image's interpreter
        t.proc = self._spawn(t, command, env)
        if task.pull_started_at is None:
            task.pull_started_at = _now()
        task.pull_stopped_at = _now()
        task.started_at = _now()
        task.status = "RUNNING"
        task.containers[0].last_status = "RUNNING"
        self._ensure_log_stream(t)
        for hook in self.on_start:
            hook(t)

    def _container_env(self, t: EmulatedTask, definition: Any, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment as ECS gives it: the image's, the definition's, the overrides', the
        secrets (from SSM), the task role's credentials, and what the agent adds."""
        task = t.task
        env = {k: v for k, v in self.env_for_workers.items() if k not in AWS_IDENTITY_VARIABLES}
        for entry in container.get("environment") or []:
            env[entry["name"]] = entry["value"]
        for override in (task.overrides or {}).get("containerOverrides", []):
            for entry in override.get("environment") or []:
                env[entry["name"]] = entry["value"]
        for entry in container.get("secrets") or []:  # ECS resolves these from SSM as the task starts
            env[entry["name"]] = self._parameter(t, entry["valueFrom"])
        env.update(self.extra_env)
        env.update(self._task_credentials(t, definition))
        env["AWS_DEFAULT_REGION"] = t.region
        memory = definition.memory or container.get("memory")
        # What the real container has by other means: its task id (ECS metadata), its /cloudburst, its memory.
        env.update(workerenv.environ(worker_id=t.task_id))
        env[ROOT_VARIABLE] = str(self.work_dir / f"{t.task_id}-root")
        if memory:
            env.update(workerenv.environ(memory_limit_mib=int(memory)))
        return env

    def _spawn(self, t: EmulatedTask, command: list[str], env: dict[str, str]) -> TaskProcess:
        """Run the container's command: a process of its own, its output into the task's log; in light mode,
        worker loops on threads of this process (unless the image is not this interpreter's: then a process)."""
        role: tuple[str, Callable[[], Credentials]] | None = t.extra.pop("role", None)
        assert t.log_file is not None
        if self.light and tuple(command) == (sys.executable, *WORKER_COMMAND) and not self.extra_env:
            return ThreadTask(env, t.log_file, self._identity(t, role)).start()
        if role is not None:  # light mode, another image: served as in the default mode
            env.update(self._serve(t, *role))
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=t.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # like a container: Ctrl-C in the client's terminal does not reach it
        )

    def _task_credentials(self, t: EmulatedTask, definition: Any) -> dict[str, str]:
        """The task role's credentials, served as ECS serves them (a credentials endpoint the container
        reaches through ``AWS_CONTAINER_CREDENTIALS_FULL_URI``); no task role, no credentials."""
        role_arn = (t.task.overrides or {}).get("taskRoleArn") or getattr(definition, "task_role_arn", None)
        if not role_arn:
            return {}
        arn = str(role_arn)
        session = t.task_id

        def fetch() -> Credentials:
            return assume(arn, service=ECS_TASKS, source_arn=t.task.cluster_arn, region=t.region, session=session)

        try:
            fetch()  # ECS does not start a task whose role it cannot take
        except RoleNotTrusted as exc:
            raise _FailedToStart(f"ResourceInitializationError: {exc}") from exc
        return self._serve_credentials(t, arn, fetch)

    def _serve_credentials(self, t: EmulatedTask, role_arn: str, fetch: Callable[[], Credentials]) -> dict[str, str]:
        """Serve the task its role's credentials (an endpoint of its own); the environment that points to it.
        In light mode, the role is remembered for when the task starts (``_spawn``)."""
        if self.light:
            t.extra["role"] = (role_arn, fetch)
            return {}
        return self._serve(t, role_arn, fetch)

    def _serve(self, t: EmulatedTask, role_arn: str, fetch: Callable[[], Credentials]) -> dict[str, str]:
        endpoint = CredentialsEndpoint(fetch)
        t.extra["credentials"] = endpoint
        return endpoint.environment()

    def _identity(self, t: EmulatedTask, role: tuple[str, Callable[[], Credentials]] | None) -> SharedIdentity | None:
        """The clients a light-mode task's threads use: one set per task role, shared by its tasks."""
        if role is None:
            return None  # no task role, no credentials
        with self.lock:
            found = self._identities.get((role[0], t.region))
            if found is None:
                found = self._identities[(role[0], t.region)] = SharedIdentity(role[1])
            return found

    def _parameter(self, t: EmulatedTask, name: str) -> str:
        from moto.ssm.models import ssm_backends

        name = name.split(":parameter", 1)[-1] if name.startswith("arn:") else name
        parameter = ssm_backends[t.account][t.region].get_parameter(name)
        if parameter is None:
            raise _FailedToStart(f"ResourceInitializationError: unable to retrieve secret {name} from SSM")
        value = parameter.decrypt(parameter.value)  # ECS hands a SecureString over decrypted
        if value is None:
            raise _FailedToStart(f"ResourceInitializationError: unable to decrypt secret {name}")
        return str(value)

    def _finish(self, t: EmulatedTask, code: int | None, *, stop_code: str) -> None:
        task = t.task
        endpoint = t.extra.pop("credentials", None)
        if endpoint is not None:
            endpoint.close()  # a stopped task's credentials are no longer served
        self._flush_logs(t)
        if t.log_file is not None:
            t.log_file.close()
        container = task.containers[0]
        container.last_status = "STOPPED"
        reason = ""
        tail = t.log_path.read_bytes()[-2000:].decode("utf-8", "replace") if t.log_path else ""
        if code is not None:
            # A process killed by a signal exits 128+N in a container.
            container.exitCode = code if code >= 0 else 128 - code
            if OOM_MARK in tail and container.exitCode == 137:
                reason = "OutOfMemoryError: Container killed due to memory usage"
        else:
            container.exitCode = None
        container.reason = reason
        task.stop_code = stop_code
        task.stopped_reason = t.stopped_reason or {
            "UserInitiated": "Task stopped by user",
            "EssentialContainerExited": "Essential container in task exited",
        }.get(stop_code, stop_code)
        stamp = _now()
        task.execution_stopped_at = stamp
        task.stopped_at = stamp
        task.desired_status = "STOPPED"
        task.status = "STOPPED"
        with self.lock:
            t.done = True

    # ------------------------------------------------------------------ logs
    def _logs_backend(self, t: EmulatedTask) -> Any:
        from moto.logs.models import logs_backends

        return logs_backends[t.account][t.region]

    def _log_target(self, t: EmulatedTask) -> tuple[str, str] | None:
        """The awslogs group and stream of a task, from its task definition."""
        from moto.ecs.models import ecs_backends

        definition = ecs_backends[t.account][t.region].describe_task_definition(t.task.task_definition_arn)
        container: dict[str, Any] = definition.container_definitions[0]
        options: dict[str, Any] = (container.get("logConfiguration") or {}).get("options") or {}
        group = options.get("awslogs-group")
        prefix = options.get("awslogs-stream-prefix")
        if not group or not prefix:
            return None
        name = definition.container_definitions[0].get("name", "worker")
        return str(group), f"{prefix}/{name}/{t.task_id}"

    def _ensure_log_stream(self, t: EmulatedTask) -> None:
        target = self._log_target(t)
        if target is None:
            return
        backend = self._logs_backend(t)
        group, stream = target
        try:
            if group not in backend.groups:
                backend.create_log_group(group, {})
            backend.create_log_stream(group, stream)
        except Exception:
            pass  # exists already
        t.extra["log_target"] = target

    def _flush_logs(self, t: EmulatedTask) -> None:
        target = t.extra.get("log_target")
        if target is None or t.log_path is None:
            return
        try:
            if os.stat(t.log_path).st_size <= t.log_offset and not t.done:
                return  # nothing new: a stat, not an open and a read, on every tick for every task
            with open(t.log_path, "rb") as fh:
                fh.seek(t.log_offset)
                data = fh.read()
        except OSError:
            return
        if not data:
            return
        complete = data.rfind(b"\n") + 1
        if complete == 0 and not t.done:
            return
        chunk = data[:complete] if complete else data
        t.log_offset += len(chunk)
        stamp = int(time.time() * 1000)
        events = [
            {"timestamp": stamp, "message": line}
            for line in chunk.decode("utf-8", "replace").splitlines()
            if line.strip()
        ]
        if events:
            try:
                self._logs_backend(t).put_log_events(target[0], target[1], events)
            except Exception as exc:
                print(f"cloudburst emulator: could not store worker logs: {exc!r}", file=sys.stderr)


def default_worker_env(endpoint: str) -> dict[str, str]:
    """What an emulated container's environment starts from: no host secrets, the emulator's endpoint."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    # No credentials here: each task gets its own role's (EcsAgent._task_credentials), or none.
    env.update({"AWS_ENDPOINT_URL": endpoint, "PYTHONUNBUFFERED": "1"})
    return env


def network_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The network settings a container on this machine's network would have: proxies, CA bundle, indexes."""
    names = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.upper() in names or k.startswith(("PIP_", "UV_"))}
