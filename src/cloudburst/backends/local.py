"""The ``local`` backend: worker processes on this machine. The embedded default.

Workers are ``python -m cloudburst.worker`` processes, the same loop that runs
in the cloud, reached through the same contracts: a directory Store, the
in-process MemoryQueue served over a Unix socket, and a Launcher of child
processes. Nothing here is special-cased by the core.

No worker outlives the client: each asks the kernel to kill it when the thread
that started it ends (Linux's PR_SET_PDEATHSIG, see ``worker.die_with_parent``),
and all are started from one thread that lives as long as the client process.
A ``memory=`` limit is enforced by the kernel where it can be (``memlimit``).
A job's files live in the client's scratch folder (``scratch``).
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any, ClassVar

from ..core import scratch
from ..protocol import workerenv
from ..protocol.exitcodes import OOM_EXIT_CODE
from ..protocol.workerenv import WorkerEnv
from ..worker import memlimit
from .base import Backend, JobResources, Store, WorkerExit, WorkerSide, reason_in_log
from .localqueue import MemoryQueue, QueueServer, connect

__all__ = ["LocalBackend", "LocalLauncher", "LocalStore", "describe_exit", "file_tail"]


class LocalStore:
    """Blobs as files below a directory; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        # A lexical check, not Path.resolve(): resolving costs a stat per path component on every blob and
        # entry read, and nothing but this store writes below its (private) folder, so no link leads out.
        norm = posixpath.normpath(key)
        if norm in (".", "..") or norm.startswith(("/", "../")) or "\0" in norm:
            raise ValueError(f"store key {key!r} escapes the store")
        return self._resolved_root / norm

    @functools.cached_property
    def _resolved_root(self) -> Path:
        return self.root.resolve()

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

    def copy_from(self, src: Store, src_key: str, dst_key: str) -> bool:
        """Copy ``src_key`` of another local store here: a hard link (no bytes copied; its time is refreshed),
        or a copy across file systems; atomic as ``put``. False when ``src`` is not a local store."""
        if not isinstance(src, LocalStore):
            return False
        source, path = src._path(src_key), self._path(dst_key)
        if not source.is_file():
            raise FileNotFoundError(f"blob {src_key} is not in the store {src.root}")
        if source == path:
            os.utime(path)
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".link-{os.urandom(8).hex()}"
        try:
            try:
                os.link(source, tmp)
                os.utime(tmp)  # the blob's age is its last use (the inode is shared: the source's too)
            except OSError:  # another file system, or one without hard links
                shutil.copyfile(source, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

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


class _Spawner:
    """Starts a launcher's worker processes from one thread of its own, which lives until the launcher stops.

    Linux sends a worker its parent-death signal when the *thread* that started it ends. Started from
    whichever thread needed them (one that made an executor, say, and then ended), workers would die
    with that thread; started from this one, they die when their launcher stops or the client dies,
    and the thread ends with the launcher, so no thread of cloudburst's outlives the executor."""

    def __init__(self) -> None:
        self._requests: SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future[object]] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="cloudburst-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (request := self._requests.get()) is not None:
            make, done = request
            try:
                done.set_result(make())
            except BaseException as exc:
                done.set_exception(exc)

    def spawn(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen(args, **kwargs)``, called on the spawning thread."""
        done: Future[object] = Future()
        self._requests.put((lambda: subprocess.Popen(args, **kwargs), done))
        proc = done.result()
        assert isinstance(proc, subprocess.Popen)
        return proc

    def close(self) -> None:
        """End the thread; only once its workers have been stopped (they would get its death signal)."""
        self._requests.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class LocalLauncher:
    """Worker processes on this machine. Their output goes to one log file each.

    A worker's environment is ``base_env`` (without wire variables: see ``workerenv.inherit``), then ``wire``
    with the worker's own id (and memory cgroup) added."""

    def __init__(self, wire: WorkerEnv, base_env: Mapping[str, str], log_dir: Path, prefix: str = "w") -> None:
        self._wire = wire
        self._base_env = workerenv.inherit(base_env)
        self._log_dir = log_dir
        self._prefix = prefix
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = {}
        self._started: dict[str, int] = {}  # every worker ever started: id -> pid
        self._cgroups: dict[str, Path] = {}  # worker id -> its memory cgroup, when the kernel limits it so
        self._lock = threading.Lock()
        self._counter = 0
        self._spawner: _Spawner | None = None
        memory = wire.memory_limit_mib
        self._memory_limit = memory * 2**20 if memory is not None else None
        if self._memory_limit is not None:
            memlimit.sweep_cgroups()

    def start(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            with self._lock:
                self._counter += 1
                worker_id = f"{self._prefix}{self._counter}"
            log_path = self._log_dir / f"{worker_id}.log"
            log = open(log_path, "wb")  # noqa: SIM115 - closed when the worker is reaped
            cgroup = memlimit.make_cgroup(worker_id, self._memory_limit) if self._memory_limit else None
            wire = self._wire.replace(worker_id=worker_id, memory_cgroup="" if cgroup is None else str(cgroup))
            env = {**self._base_env, **wire.to_environ()}
            with self._lock:
                if self._spawner is None:
                    self._spawner = _Spawner()
                spawner = self._spawner
            proc = spawner.spawn(
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
                if cgroup is not None:
                    self._cgroups[worker_id] = cgroup
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
        with self._lock:
            gone = [(wid, self._cgroups.pop(wid)) for wid, _ in targets if wid in self._cgroups]
            spawner, self._spawner = (self._spawner, None) if worker_ids is None else (None, self._spawner)
        for _, cgroup in gone:
            memlimit.remove_cgroup(cgroup)
        if spawner is not None:  # every worker is stopped: its thread may end (a later start makes another)
            spawner.close()

    def poll(self) -> list[WorkerExit]:
        exits = []
        with self._lock:
            items = list(self._procs.items())
        for worker_id, (proc, log_path, log) in items:
            code = proc.poll()
            if code is None:
                continue
            log.close()
            tail = file_tail(log_path)
            reason = reason_in_log(tail) or describe_exit(code)
            with self._lock:
                self._procs.pop(worker_id, None)
                cgroup = self._cgroups.pop(worker_id, None)
            if cgroup is not None:
                code, reason = self._killed_for_memory(cgroup, code, reason)
                memlimit.remove_cgroup(cgroup)
            exits.append(WorkerExit(worker_id, code, reason, tail))
        if any(e.exit_code != 0 for e in exits):
            scratch.sweep()  # a worker killed outright leaves its scratch folder behind
        return exits

    def _killed_for_memory(self, cgroup: Path, code: int, reason: str) -> tuple[int, str]:
        """A worker the kernel killed at its cgroup's memory.max: reported as out of memory, exit code 137."""
        if code != -signal.SIGKILL or not memlimit.oom_kills(cgroup) or self._memory_limit is None:
            return code, reason
        peak = memlimit.peak_bytes(cgroup) or self._memory_limit
        return OOM_EXIT_CODE, (
            f"OutOfMemoryError: the worker used {peak / 2**20:.0f} MiB, over its memory limit of "
            f"{self._memory_limit / 2**20:.0f} MiB (killed by the kernel: {memlimit.CGROUP}); "
            "ask for more memory= or use less per task"
        )

    def running(self) -> int:
        with self._lock:
            return sum(1 for proc, _, _ in self._procs.values() if proc.poll() is None)

    def pids(self) -> dict[str, int]:
        """Every worker this launcher started, alive or not."""
        with self._lock:
            return dict(self._started)


def file_tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a worker's log, as text ("" when it cannot be read)."""
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

    def open_job(self, job_id: str, key: bytes, worker_env: WorkerEnv) -> JobResources:
        root = scratch.make("j")  # short: the queue socket's path must fit in 108 bytes
        (root / "store").mkdir()
        (root / "logs").mkdir()
        tasks, results = MemoryQueue(self.lease_seconds), MemoryQueue(self.lease_seconds)
        address = str(root / "q.sock")
        server = QueueServer(address, key, [tasks, results])
        wire = worker_env.replace(
            backend=self.import_path(),
            queue_address=address,
            store_dir=str(root / "store"),
            parent_pid=os.getpid(),
            sys_path=tuple(p for p in sys.path if p),
            memory_limit_mib=self.options.memory_mib,
        )
        env = dict(os.environ)
        threads = str(max(1, int(self.options.cpu)))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            env.setdefault(name, threads)
        launcher = LocalLauncher(wire, env, root / "logs")
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
    def connect_worker(cls, env: WorkerEnv) -> WorkerSide:
        key = bytes.fromhex(env.job_key)
        tasks, results = connect(env.queue_address, key, env.worker_id or "w?", 2)
        store: Store = LocalStore(Path(env.store_dir))
        return WorkerSide(store, tasks, results, parent_pid=env.parent_pid)
