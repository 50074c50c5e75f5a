"""The supervisor: what every Fargate task runs, and what watches the client there.

::

    python -m cloudburst.worker   (wire environment: supervisor, or slots=N > 1)
    start N worker loops as child processes (the kernel kills them if this process dies)
    every 0.2 s:
        copy what the children wrote to this container's log, whole lines
        a child exited ─► 0: it retired ─► not replaced
                       └► else: report it (D notice: reason, last output) ─► start another;
                                5 deaths within 2 minutes ─► give up (exit 1)
    control watch (a thread here, where no user code runs, so nothing can starve it):
        the job stopped, or the client silent for client_timeout ─► stop the children, exit 0
    SIGTERM (StopTask, a Spot interruption) ─► pass it on, stop the children, die of SIGTERM

Stopping the children: SIGTERM, then SIGKILL for any still running after ``GRACE_SECONDS``
(a task in a long C call that holds the GIL runs no Python signal handler until it returns).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from ..backends import get_backend
from ..backends.base import WorkerExit, reason_in_log
from ..backends.local import describe_exit, file_tail
from ..core import scratch
from ..protocol import workerenv
from ..protocol.exitcodes import OOM_EXIT_CODE
from ..protocol.task import DIED, encode
from ..protocol.workerenv import WorkerEnv
from . import memlimit
from .loop import Worker, die_of_sigterm

__all__ = ["GRACE_SECONDS", "Supervisor", "supervise"]

GRACE_SECONDS = 3.0
MAX_DEATHS = 5  # within DEATH_WINDOW seconds: the worker loop cannot run here
DEATH_WINDOW = 120.0


def supervise(env: WorkerEnv, environ: Mapping[str, str]) -> int:
    """Run ``env.slots`` worker loops as child processes until they retire or the job ends. Children get
    ``environ`` (this process's environment) without its wire variables, then their own."""
    return Supervisor(env, environ).run()


class Supervisor:
    """Starts, watches, reports and replaces the worker processes of one machine."""

    def __init__(self, env: WorkerEnv, environ: Mapping[str, str]) -> None:
        self.env = env
        self.base_env = workerenv.inherit(environ)
        self.slots = max(1, env.slots)
        self.side = get_backend(env.backend).connect_worker(env)
        self.watcher = Worker(self.side, env, announce=False)  # for its reading of the job's control record
        self.key_hex = self.watcher.key.hex()
        self.key = self.watcher.key
        self.job = self.watcher.job
        self.me = self.watcher.worker_id
        self.folder = scratch.own(reaper=False)
        self.children: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
        self.offsets: dict[Path, int] = {}
        self.deaths: list[float] = []
        self.counter = itertools.count(self.slots)
        self.over = threading.Event()  # the job ended or the client went silent
        self.terminated = False  # SIGTERM came
        self.failed = False  # children kept dying
        self.kill_at: float | None = None  # when children still running get SIGKILL
        self.oom_kills = memlimit.oom_kills()

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        print(
            f"cloudburst-worker {self.me}: started for job {self.env.job_id[:12]} "
            f"(supervisor of {self.slots} worker process(es), pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )
        self.children = {k: self.start(k) for k in range(self.slots)}
        threading.Thread(target=self.watch_control, name="control-watch", daemon=True).start()
        while self.children:
            time.sleep(0.2)
            if self.kill_at is None and self.stopping:
                self.stop_children()
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.kill_children()
            for k, (proc, log) in list(self.children.items()):
                code = proc.poll()
                self.relay(log)
                if code is not None:
                    del self.children[k]
                    self.reap(k, log, code)
        if self.terminated:
            die_of_sigterm()
        return 1 if self.failed else 0

    def name(self, k: int) -> str:
        """Child k's worker id: ``<machine>.<k>``, never the machine's own, so that the client can tell a child's
        death (a ``D`` notice) from the machine's (the launcher's report)."""
        return f"{self.me}.{k}"

    def start(self, k: int) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.folder / f"{self.name(k)}.log"
        wire = self.env.replace(
            slots=1,
            supervisor=False,
            supervised=True,  # this process watches the job and the client for it
            worker_id=self.name(k),
            job_key=self.key_hex,  # a process of this machine: no need to fetch it again
            parent_pid=os.getpid(),
        )
        child_env = {**self.base_env, **wire.to_environ()}
        with open(log, "ab") as out:
            # Children write to a file, copied to this container's log as it grows; its tail goes with a
            # death notice.
            self.offsets[log] = out.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", "cloudburst.worker"], env=child_env, stdout=out, stderr=subprocess.STDOUT
            )
        return proc, log

    def relay(self, log: Path, final: bool = False) -> None:
        """Copy what a child wrote since the last look to this process's output (the container log).

        Whole lines only, so that children's lines do not interleave; ``final``: the rest too."""
        try:
            with open(log, "rb") as fh:
                fh.seek(self.offsets.get(log, 0))
                chunk = fh.read()
        except OSError:
            return
        cut = len(chunk) if final else chunk.rfind(b"\n") + 1
        if cut:
            sys.stdout.buffer.write(chunk[:cut] + (b"\n" if final and not chunk.endswith(b"\n") else b""))
            sys.stdout.flush()
            self.offsets[log] = self.offsets.get(log, 0) + cut

    def reap(self, k: int, log: Path, code: int) -> None:
        """A child exited: pass its last words on; report and replace it unless it retired or all is stopping."""
        self.relay(log, final=True)
        self.offsets.pop(log, None)
        tail = file_tail(log, 4000)
        with contextlib.suppress(OSError):
            log.unlink()
        scratch.sweep()  # the folder of a child killed outright
        if code == 0 or self.stopping:
            return
        reason = reason_in_log(tail) or describe_exit(code)
        kills = memlimit.oom_kills()
        if code == -signal.SIGKILL and kills > self.oom_kills:
            code, reason = OOM_EXIT_CODE, "OutOfMemoryError: killed by the kernel at the container's memory limit"
        self.oom_kills = kills
        try:
            self.side.results.send_batch(
                [encode(self.key, DIED, 0, WorkerExit(self.name(k), code, reason, tail), job=self.job)]
            )
        except Exception as exc:
            print(f"cloudburst-worker: could not report a dead worker process: {exc}", file=sys.stderr)
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < DEATH_WINDOW] + [now]
        if len(self.deaths) >= MAX_DEATHS:  # they cannot work here: stop, and let the client see this machine fail
            print(f"cloudburst-worker: {len(self.deaths)} worker processes died within 2 minutes; giving up")
            self.failed = True
            return
        n = next(self.counter)
        self.children[n] = self.start(n)

    # ------------------------------------------------------------------ stopping
    @property
    def stopping(self) -> bool:
        return self.over.is_set() or self.terminated or self.failed or self.kill_at is not None

    def watch_control(self) -> None:
        """Look at the job's control record every control_period; set ``over`` when it says stop."""
        while not self.over.wait(self.watcher.control_period):
            try:
                over = self.watcher.job_over()
            except Exception as exc:  # an unreachable store: the next look decides
                print(f"cloudburst-worker: could not read the job's control record: {exc}", file=sys.stderr)
                continue
            if over:
                self.over.set()

    def on_term(self, signum: int, frame: object) -> None:
        self.terminated = True
        for proc, _ in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop_children(self) -> None:
        """SIGTERM every child now; SIGKILL for those still running after the grace period."""
        self.kill_at = time.monotonic() + GRACE_SECONDS
        for proc, _ in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def kill_children(self) -> None:
        for proc, _ in self.children.values():
            if proc.poll() is None:
                proc.kill()
