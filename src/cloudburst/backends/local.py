"""The ``local`` backend: worker processes on this machine. The embedded default.

Workers are ``python -m cloudburst.worker`` processes, the same loop that runs
in the cloud, reached through the same contracts: a directory Store, the
in-process MemoryQueue served over a Unix socket, and a Launcher of child
processes. Nothing here is special-cased by the core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, ClassVar

from .base import Backend, JobResources, Store, WorkerExit, WorkerSide
from .localqueue import MemoryQueue, QueueServer, connect

__all__ = ["LocalBackend", "LocalLauncher", "LocalStore"]

REASON_PREFIX = "cloudburst-worker: exit reason: "


class LocalStore:
    """Blobs as files below a directory; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"store key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_file(self, key: str, cache_dir: Path) -> Path:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(f"blob {key} is not in the store {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix) if prefix else self.root
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def describe_exit(code: int | None) -> str:
    """'killed by SIGKILL', 'exit code 3', ... for a subprocess return code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalLauncher:
    """Worker processes on this machine. Their output goes to one log file each."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, prefix: str = "w") -> None:
        self._env = dict(env)
        self._log_dir = log_dir
        self._prefix = prefix
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = {}
        self._started: dict[str, int] = {}  # every worker ever started: id -> pid
        self._lock = threading.Lock()
        self._counter = 0

    def start(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            with self._lock:
                self._counter += 1
                worker_id = f"{self._prefix}{self._counter}"
            log_path = self._log_dir / f"{worker_id}.log"
            log = open(log_path, "wb")  # noqa: SIM115 - closed when the worker is reaped
            env = {**self._env, "CLOUDBURST_WORKER_ID": worker_id}
            proc = subprocess.Popen(
                [sys.executable, "-m", "cloudburst.worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
            with self._lock:
                self._procs[worker_id] = (proc, log_path, log)
                self._started[worker_id] = proc.pid
            ids.append(worker_id)
        return ids

    def stop(self, worker_ids: Sequence[str] | None = None, timeout: float = 2.0) -> None:
        with self._lock:
            targets = [(wid, entry) for wid, entry in self._procs.items() if worker_ids is None or wid in worker_ids]
        for _, (proc, _, _) in targets:
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for _, (proc, _, _) in targets:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def poll(self) -> list[WorkerExit]:
        exits = []
        with self._lock:
            items = list(self._procs.items())
        for worker_id, (proc, log_path, log) in items:
            code = proc.poll()
            if code is None:
                continue
            log.close()
            tail = _tail(log_path)
            reason = describe_exit(code)
            for line in reversed(tail.splitlines()):
                if line.startswith(REASON_PREFIX):
                    reason = line[len(REASON_PREFIX) :]
                    break
            exits.append(WorkerExit(worker_id, code, reason, tail))
            with self._lock:
                self._procs.pop(worker_id, None)
        return exits

    def running(self) -> int:
        with self._lock:
            return sum(1 for proc, _, _ in self._procs.values() if proc.poll() is None)

    def pids(self) -> dict[str, int]:
        """Every worker this launcher started, alive or not."""
        with self._lock:
            return dict(self._started)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class LocalBackend(Backend):
    """Worker processes on this machine, reached through the same contracts as the cloud."""

    name: ClassVar[str] = "local"
    max_message_bytes: ClassVar[int] = 1 << 20
    target_task_seconds: ClassVar[float] = 0.1
    lease_seconds = 30.0
    reports_leases: ClassVar[bool] = True

    def open_job(self, job_id: str, key: bytes, worker_env: Mapping[str, str]) -> JobResources:
        root = Path(tempfile.mkdtemp(prefix=f"cloudburst-{job_id[:8]}-"))
        (root / "store").mkdir()
        (root / "logs").mkdir()
        tasks, results = MemoryQueue(self.lease_seconds), MemoryQueue(self.lease_seconds)
        address = str(root / "queue.sock")
        server = QueueServer(address, key, [tasks, results])
        env = dict(os.environ)
        env.update(worker_env)
        env.update(
            {
                "CLOUDBURST_BACKEND": self.import_path(),
                "CLOUDBURST_QUEUE_ADDRESS": address,
                "CLOUDBURST_STORE_DIR": str(root / "store"),
                "CLOUDBURST_PARENT_PID": str(os.getpid()),
                "CLOUDBURST_SYS_PATH": json.dumps([p for p in sys.path if p]),
            }
        )
        if self.options.memory_mib is not None:
            env["CLOUDBURST_MEMORY_LIMIT_MIB"] = str(self.options.memory_mib)
        threads = str(max(1, int(self.options.cpu)))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            env.setdefault(name, threads)
        launcher = LocalLauncher(env, root / "logs")
        resources = JobResources(LocalStore(root / "store"), tasks, results, launcher)
        self._server = server
        self._root = root
        return resources

    def close_job(self, resources: JobResources, *, keep: bool = False) -> None:
        launcher = resources.launcher
        launcher.stop()
        launcher.poll()
        for queue in (resources.tasks, resources.results):
            if isinstance(queue, MemoryQueue):
                queue.close()
        self._server.close()
        if not keep:
            shutil.rmtree(self._root, ignore_errors=True)

    @classmethod
    def connect_worker(cls, env: Mapping[str, str]) -> WorkerSide:
        key = bytes.fromhex(env["CLOUDBURST_JOB_KEY"])
        tasks, results = connect(env["CLOUDBURST_QUEUE_ADDRESS"], key, env.get("CLOUDBURST_WORKER_ID", "w?"), 2)
        store: Store = LocalStore(Path(env["CLOUDBURST_STORE_DIR"]))
        parent = env.get("CLOUDBURST_PARENT_PID")
        return WorkerSide(store, tasks, results, parent_pid=int(parent) if parent else None)
