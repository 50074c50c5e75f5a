"""``python -m cloudburst.worker``: read the wire environment, then run the supervisor (``supervisor``) or
one worker loop (``loop``) in this process.

Either way, the kernel is asked to kill this process when the one that started it ends
(``die_with_parent``), and SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and
the client decides what stops.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from collections.abc import Mapping

from ..backends import get_backend
from ..backends.base import Backend
from ..protocol.workerenv import WorkerEnv, from_environ
from . import memlimit
from .loop import Worker, die_of_sigterm, say_exit_reason
from .supervisor import supervise

__all__ = ["die_with_parent", "main"]

PR_SET_PDEATHSIG = 1


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the supervisor or one loop, as the wire environment says; the process's exit code."""
    environ = os.environ if environ is None else environ
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = from_environ(environ)
    die_with_parent(env.parent_pid)
    if env.slots > 1 or env.supervisor:
        return supervise(env, environ)
    return _one_loop(env)


def _one_loop(env: WorkerEnv) -> int:
    """One worker loop in this process, under its memory limit, until it retires or the job ends."""
    memory = env.memory_limit_mib
    memory_mode = memlimit.limit_self(memory * 2**20, env.memory_cgroup) if memory is not None else memlimit.POLL
    faulthandler.enable(all_threads=False)  # a crash in C code leaves a Python traceback in the worker's log
    for entry in reversed(env.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    backend = get_backend(env.backend)
    worker = Worker(backend.connect_worker(env), env, announce=not backend.reports_leases, own_process=True)
    worker.memory_mode = memory_mode
    signal.signal(signal.SIGTERM, _say_and_die)
    limit = f", memory limit {memory} MiB enforced by {memory_mode}" if memory is not None else ""
    print(
        f"cloudburst-worker {worker.worker_id}: started for job {env.job_id[:12]} "
        f"(backend {backend.name}, pid {os.getpid()}{limit})",
        file=sys.stderr,
        flush=True,
    )
    return _run(worker, backend)


def _run(worker: Worker, backend: type[Backend]) -> int:
    """Run the loop; the ways its backend says the job is over end it quietly."""
    try:
        return worker.run()
    except MemoryError as exc:  # in the loop's own work (packing a result, say)
        worker.check_memory_error(exc)
        raise
    except (EOFError, ConnectionError, BrokenPipeError):
        worker.say_exit("lost the connection to the client")
        return 0
    except Exception as exc:
        if backend.job_is_gone(exc):
            worker.say_exit("the job's queue is gone (the job ended)")
            return 0
        raise


def die_with_parent(parent: int | None) -> None:
    """Have the kernel SIGKILL this worker when the process that started it ends (Linux).

    Unlike a watchdog thread, this works while a task holds the GIL in a long C call. To Linux the
    parent is the thread that started this process: the local launcher starts workers from a thread
    that lives as long as the client, the supervisor from its main thread."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes  # not at the top: only Linux workers need it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return  # the parent watch still runs
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the request took effect
        say_exit_reason("the client process is gone")
        os._exit(0)


def _say_and_die(signum: int, frame: object) -> None:
    """SIGTERM (StopTask, a Spot interruption, the client stopping us): say so, clean up, then die of it."""
    die_of_sigterm()
