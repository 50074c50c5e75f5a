"""The ``dirqueue`` backend: a directory store, file queues leased by atomic rename, subprocess workers.

::

    <job folder>/store/<key>                      blobs; written to a temporary file, then renamed
    <job folder>/<queue>/ready/<sent>-<id>.<n>    waiting; n = deliveries so far
    <job folder>/<queue>/leased/<sent>-<id>.<n>   leased; its modification time is when the lease ends

Receiving renames a file from ``ready`` to ``leased`` (only one process wins a rename), acknowledging
deletes it, and a lease that ends (or is released with ``extend(r, 0)``) renames it back. Processes on
one machine share the folders, so the workers need nothing but their environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, ClassVar

from cloudburst.backends.base import Backend, JobResources, Message, WorkerExit, WorkerSide, reason_in_log
from cloudburst.protocol.workerenv import WorkerEnv, inherit

POLL_SECONDS = 0.02  # how often a waiting receive looks again


def _write_atomically(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class DirStore:
    """Blobs as files below a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"store key {key!r} escapes the store")
        return self.root / key

    def put(self, key: str, data: bytes | memoryview) -> None:
        _write_atomically(self._path(key), data)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()  # FileNotFoundError when missing, as the contract asks

    def get_file(self, key: str, cache_dir: Path) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no blob {key!r} in {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        for path in sorted(self.root.rglob("*"), reverse=True):
            if path.is_file() and path.relative_to(self.root).as_posix().startswith(prefix):
                path.unlink(missing_ok=True)


class DirQueue:
    """A queue of files; see the module's docstring. Receipts are the leased files' names."""

    def __init__(self, root: Path, lease_seconds: float) -> None:
        self.ready, self.leased = root / "ready", root / "leased"
        self.lease_seconds = lease_seconds

    @classmethod
    def create(cls, root: Path, lease_seconds: float) -> DirQueue:
        """Make the queue's folders."""
        (root / "ready").mkdir(parents=True)
        (root / "leased").mkdir()
        return cls(root, lease_seconds)

    def send_batch(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            _write_atomically(self.ready / f"{time.time_ns():020d}-{uuid.uuid4().hex}.0", body)

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        deadline = time.monotonic() + wait
        while True:
            messages = self._lease(max_messages)
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(POLL_SECONDS)

    def _lease(self, max_messages: int) -> list[Message]:
        try:
            self._expire()
            names = sorted(os.listdir(self.ready))
        except FileNotFoundError as exc:  # the job's folder was deleted: the job ended
            raise EOFError(f"queue {self.ready.parent} is gone") from exc
        out: list[Message] = []
        for name in names:
            if len(out) == max_messages or name.startswith("."):
                continue
            stem, count = name.rsplit(".", 1)
            receipt = f"{stem}.{int(count) + 1}"
            try:
                os.rename(self.ready / name, self.leased / receipt)  # only one receiver wins
                ends = time.time() + self.lease_seconds
                os.utime(self.leased / receipt, (ends, ends))
                body = (self.leased / receipt).read_bytes()
            except FileNotFoundError:
                continue  # another receiver took it first
            out.append(Message(receipt, body, int(count) + 1))
        return out

    def _expire(self) -> None:
        now = time.time()
        for name in os.listdir(self.leased):
            try:
                if os.stat(self.leased / name).st_mtime <= now:
                    os.rename(self.leased / name, self.ready / name)
            except FileNotFoundError:
                pass  # acknowledged or expired by someone else meanwhile

    def ack(self, receipts: Sequence[str]) -> None:
        for receipt in receipts:
            (self.leased / receipt).unlink(missing_ok=True)

    def extend(self, receipts: Sequence[str], seconds: float) -> None:
        ends = time.time() + seconds
        for receipt in receipts:
            try:
                if seconds <= 0:
                    os.rename(self.leased / receipt, self.ready / receipt)
                else:
                    os.utime(self.leased / receipt, (ends, ends))
            except FileNotFoundError:
                pass  # no longer leased: ignored, as the contract asks

    def purge(self) -> None:
        for name in os.listdir(self.ready):
            (self.ready / name).unlink(missing_ok=True)


class ProcessLauncher:
    """``python -m cloudburst.worker`` subprocesses, each with a log file. Started from one thread that
    lives as long as the launcher: on Linux a worker dies with the thread that started it."""

    def __init__(self, wire: WorkerEnv, log_dir: Path) -> None:
        self._wire, self._log_dir = wire, log_dir
        self._base_env = inherit(os.environ)  # this process's environment, without a worker's wire variables
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="dirqueue-spawner")

    def start(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            with self._lock:
                self._counter += 1
                worker_id = f"d{self._counter}"
            log_path = self._log_dir / f"{worker_id}.log"
            log = open(log_path, "wb")  # noqa: SIM115 - closed when the worker is reported
            env = {**self._base_env, **self._wire.replace(worker_id=worker_id).to_environ()}
            args = [sys.executable, "-m", "cloudburst.worker"]
            proc = self._spawner.submit(
                subprocess.Popen, args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            ).result()
            with self._lock:
                self._procs[worker_id] = (proc, log_path, log)
            ids.append(worker_id)
        return ids

    def stop(self, worker_ids: Sequence[str] | None = None) -> None:
        with self._lock:
            procs = [p for w, (p, _, _) in self._procs.items() if worker_ids is None or w in worker_ids]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(2.0)
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
            with open(log_path, "rb") as fh:
                tail = fh.read()[-2000:].decode("utf-8", "replace")
            with self._lock:
                del self._procs[worker_id]
            exits.append(WorkerExit(worker_id, code, reason_in_log(tail) or _describe(code), tail))
        return exits

    def running(self) -> int:
        with self._lock:
            return len(self._procs)

    def close(self) -> None:
        """Stop every worker, then the spawning thread."""
        self.stop()
        self._spawner.shutdown()


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class DirQueueBackend(Backend):
    """Subprocess workers on this machine, fed through a directory store and file queues."""

    name: ClassVar[str] = "dirqueue"
    max_message_bytes: ClassVar[int] = 1 << 20
    target_task_seconds: ClassVar[float] = 0.1
    lease_seconds = 30.0

    def open_job(self, job_id: str, key: bytes, worker_env: WorkerEnv) -> JobResources:
        self._root = root = Path(tempfile.mkdtemp(prefix="cb-dirqueue-"))
        (root / "logs").mkdir()
        env = worker_env.replace(
            backend=self.import_path(),
            backend_args={"root": str(root)},  # where this backend's workers find the job: its own field
            parent_pid=os.getpid(),
            # this package, and whatever the client can import, importable in the workers
            sys_path=(str(Path(__file__).parent.parent), *filter(None, sys.path)),
        )
        return JobResources(
            DirStore(root / "store"),
            DirQueue.create(root / "tasks", self.lease_seconds),
            DirQueue.create(root / "results", self.lease_seconds),
            ProcessLauncher(env, root / "logs"),
        )

    def close_job(self, resources: JobResources, *, keep: bool = False) -> None:
        launcher = resources.launcher
        if isinstance(launcher, ProcessLauncher):
            launcher.close()
        launcher.poll()
        if not keep:
            shutil.rmtree(self._root, ignore_errors=True)

    @classmethod
    def connect_worker(cls, env: WorkerEnv) -> WorkerSide:
        root = Path(env.backend_args["root"])
        return WorkerSide(
            DirStore(root / "store"),
            DirQueue(root / "tasks", env.lease_seconds),
            DirQueue(root / "results", env.lease_seconds),
            parent_pid=env.parent_pid,
        )
