"""Processes and the machine they run on: what a peer, a killed client, a task or a day of use can do.

* The local queue server survives any peer, and its threads end when the executor shuts down.
* No worker outlives a killed client, even while its task holds the GIL in one long C call:
  locally the kernel ends it; on (emulated) Fargate the supervisor, which runs no user code, does.
* Every scratch folder a client or a worker makes is removed: as it exits, or by the client or
  the next run when it was killed outright.
* ``memory=`` on the local backend is a limit the kernel enforces: one large C allocation cannot
  pass it.

Clients that get killed run as their own processes, as a user's script would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, answer_challenge
from pathlib import Path

import pytest

import cloudburst
from cloudburst.backends.localqueue import MemoryQueue, QueueServer, connect
from cloudburst.emulator import Emulator

from .conftest import process_gone, wait_until

KEY = b"k" * 32

# ---------------------------------------------------------------------------- helpers


def run_client(script: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``script`` as a client process of its own (output piped, text)."""
    path = tmp_path / "client.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------- the local queue server


def silent_peer(address: str) -> socket.socket:
    """Connects and sends nothing."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    return sock


def hang_up_peer(address: str) -> socket.socket:
    """Reads the server's challenge, then hangs up in the middle of the handshake."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    conn = Connection(os.dup(sock.fileno()))
    conn.recv_bytes(256)  # all of it: the server then reads the end of the connection, not a reset
    conn.close()
    sock.close()
    return sock


def wrong_key_peer(address: str) -> socket.socket:
    """Answers the challenge with another key: the server's check fails."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    conn = Connection(os.dup(sock.fileno()))
    try:
        answer_challenge(conn, b"not the job key")
    except Exception:
        pass
    conn.close()
    return sock


def garbage_peer(address: str) -> socket.socket:
    """Sends bytes that are no handshake at all."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    sock.sendall(b"\xff" * 64)
    return sock


BAD_PEERS = [silent_peer, hang_up_peer, wrong_key_peer, garbage_peer]


@pytest.fixture
def queue_server(tmp_path: Path) -> Iterator[tuple[QueueServer, MemoryQueue]]:
    queue = MemoryQueue(30.0)
    server = QueueServer(str(tmp_path / "q.sock"), KEY, [queue])
    yield server, queue
    server.close()


def connect_within(address: str, seconds: float) -> list[object] | None:
    """Connect as a worker would; None if that does not finish within ``seconds``."""
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.extend(connect(address, KEY, "good", 1)), daemon=True)
    thread.start()
    thread.join(seconds)
    return got or None


@pytest.mark.parametrize("bad_peer", BAD_PEERS, ids=lambda f: f.__name__)
def test_queue_server_survives_a_bad_peer(
    bad_peer: Callable[[str], socket.socket], queue_server: tuple[QueueServer, MemoryQueue]
) -> None:
    server, queue = queue_server
    bad = bad_peer(server.address)  # a silent one stays connected while the good one connects
    try:
        proxies = connect_within(server.address, 15)
        assert proxies is not None, f"after a peer that {bad_peer.__doc__} no worker can connect"
        (remote,) = proxies
        remote.send_batch([b"hello"])  # type: ignore[attr-defined]
        assert wait_until(lambda: queue.pending() == [b"hello"], timeout=10)
        again = connect_within(server.address, 15)  # and the next one too
        assert again is not None
    finally:
        bad.close()


def queue_threads(exclude: set[threading.Thread]) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cloudburst-queue") and t not in exclude]


def test_queue_server_threads_end_at_close(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    server = QueueServer(str(tmp_path / "q.sock"), KEY, [MemoryQueue(30.0)])
    good = connect_within(server.address, 15)  # a worker that stays connected
    silent = silent_peer(server.address)  # and a peer that never finishes its handshake
    assert good is not None and wait_until(lambda: len(queue_threads(before)) == 3, timeout=10)
    server.close()
    try:
        assert wait_until(lambda: not queue_threads(before), timeout=10), queue_threads(before)
    finally:
        silent.close()


def test_executor_shutdown_ends_the_queue_server_threads() -> None:
    before = set(threading.enumerate())
    ex = cloudburst.Executor(2)
    assert list(ex.map(abs, range(-4, 0))) == [4, 3, 2, 1]
    ex.shutdown()
    assert wait_until(lambda: not queue_threads(before), timeout=10), queue_threads(before)


# ---------------------------------------------------------------------------- no worker outlives a killed client

# The task holds the GIL all along: libc's sleep called through ctypes.PyDLL, which does not release it.
GIL_CLIENT = """
import ctypes, os, sys, time
import cloudburst

def hold_the_gil(marker):
    with open(marker, "w") as fh:
        fh.write(str(os.getpid()))
    ctypes.PyDLL(None).sleep(300)
    return 1

ex = cloudburst.Executor(1, backend=sys.argv[2], **({"client_timeout": 10} if sys.argv[2] == "fargate" else {}))
future = ex.submit(hold_the_gil, sys.argv[1])
time.sleep(600)
"""


def _kill_client_holding_the_gil(tmp_path: Path, backend: str) -> tuple[int, float, subprocess.Popen[str]]:
    """Start a client whose task holds the GIL, SIGKILL it once the task runs: (worker pid, when killed)."""
    marker = tmp_path / "worker.pid"
    client = run_client(GIL_CLIENT, tmp_path, str(marker), backend)
    ok = wait_until(lambda: marker.exists() and marker.read_text().isdigit(), timeout=90)
    if not ok:
        client.kill()
        _, err = client.communicate()
        pytest.fail(f"the task never started:\n{err}")
    time.sleep(0.5)  # well inside the C call
    client.kill()
    killed = time.monotonic()
    client.wait()
    return int(marker.read_text()), killed, client


def test_local_workers_die_with_a_killed_client_even_holding_the_gil(tmp_path: Path) -> None:
    worker, killed, _ = _kill_client_holding_the_gil(tmp_path, "local")
    try:
        assert wait_until(lambda: process_gone(worker), timeout=15), "the worker outlived its killed client"
        print(f"local worker outlived its SIGKILLed client by {time.monotonic() - killed:.2f} s")
    finally:
        kill_all([worker])


def test_fargate_workers_stop_when_the_client_falls_silent_even_holding_the_gil(
    emulator: Emulator, tmp_path: Path
) -> None:
    worker, killed, _ = _kill_client_holding_the_gil(tmp_path, "fargate")
    with open(f"/proc/{worker}/stat") as fh:
        parent = int(fh.read().rsplit(")", 1)[1].split()[1])
    task = [worker] if parent == os.getpid() else [worker, parent]  # the emulated task's process: its supervisor
    try:
        # client_timeout=10, a look every 2.5 s, SIGKILL 3 s after SIGTERM; 60 s is generous.
        gone = wait_until(lambda: all(process_gone(p) for p in task), timeout=60)
        assert gone, "the Fargate worker outlived its silent client"
        print(f"emulated Fargate worker outlived its SIGKILLed client by {time.monotonic() - killed:.2f} s")
    finally:
        kill_all(task)


def test_workers_outlive_the_thread_that_made_the_executor() -> None:
    """The kernel's parent-death signal follows the thread that started a worker, not its process:
    an executor made in a thread that then ends keeps its workers."""
    made: list[tuple[cloudburst.Executor, int]] = []

    def make() -> None:
        ex = cloudburst.Executor(1)
        made.append((ex, ex.submit(os.getpid).result(timeout=60)))  # its worker is up, then this thread ends

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    ((ex, first),) = made
    try:
        assert ex.submit(os.getpid).result(timeout=60) == first
        assert ex._job.stats["worker_deaths"] == 0
    finally:
        ex.shutdown()


# ---------------------------------------------------------------------------- scratch folders

SCRATCH_CLIENT = """
import os, signal, sys, time
import numpy as np
import cloudburst

def uses_a_blob(i, data, how, marker):
    first = i == 1 and not os.path.exists(marker)
    if first:
        open(marker, "w").close()
    if first and how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if first and how == "os_exit":
        os._exit(3)
    if first and how.startswith("client_"):
        time.sleep(300)  # until the client is killed, and this worker with it
    return float(data[i])

marker, how = sys.argv[1:3]
data = np.arange(2_000_000, dtype=np.float64)  # 16 MB, sent once, decompressed by each worker
with cloudburst.Executor(2) as ex:
    print(list(ex.map(uses_a_blob, range(4), [data] * 4, [how] * 4, [marker] * 4, chunksize=1)), flush=True)
"""


def leftovers(tmp: Path) -> list[str]:
    """Everything below the temporary folder but the (empty) per-user cloudburst folder."""
    found = []
    for folder, dirs, files in os.walk(tmp):  # what vanishes while it looks is skipped
        found += [os.path.relpath(os.path.join(folder, name), tmp) for name in dirs + files]
    return [p for p in found if p != f"cloudburst-{os.geteuid()}"]


@dataclass
class ScratchRow:
    name: str
    how: str  # what happens during the job (see SCRATCH_CLIENT)
    kill_client: int | None = None  # signal sent to the client once a task runs


SCRATCH_ROWS = [
    ScratchRow("client and workers exit normally (workers stopped by SIGTERM)", "normal"),
    ScratchRow("a worker is killed by SIGKILL", "sigkill"),
    ScratchRow("a worker ends by os._exit", "os_exit"),
    ScratchRow("the client is stopped by SIGTERM", "client_sigterm", signal.SIGTERM),
    ScratchRow("the client is killed by SIGKILL (its workers: by the next run)", "client_sigkill", signal.SIGKILL),
]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder of its own for a client, with a short name (a Unix socket's path has 108 bytes)."""
    tmp = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("row", SCRATCH_ROWS, ids=lambda r: r.how)
def test_scratch_folders_are_removed(row: ScratchRow, tmp_path: Path, short_tmp: Path) -> None:
    tmp = short_tmp
    marker = tmp_path / "marker"
    client = run_client(SCRATCH_CLIENT, tmp_path, str(marker), row.how, env={"TMPDIR": str(tmp)})
    if row.kill_client is None:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0 and "[0.0, 1.0, 2.0, 3.0]" in out, err
    else:
        try:
            assert wait_until(marker.exists, timeout=60), "the task never started"
            assert wait_until(lambda: len(leftovers(tmp)) > 0, timeout=10)
            client.send_signal(row.kill_client)
            client.communicate(timeout=30)
        finally:
            client.kill()
    if row.kill_client == signal.SIGKILL:  # the next run sweeps what the killed workers left
        assert wait_until(lambda: not leftovers(tmp) or _next_run(tmp, tmp_path), timeout=30)
    assert wait_until(lambda: not leftovers(tmp), timeout=15), leftovers(tmp)


def _next_run(tmp: Path, tmp_path: Path) -> bool:
    script = "import cloudburst\nwith cloudburst.Executor(1) as ex:\n    assert ex.submit(abs, -1).result() == 1\n"
    client = run_client(script, tmp_path, env={"TMPDIR": str(tmp)})
    _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    return not leftovers(tmp)


# ---------------------------------------------------------------------------- memory= is a hard limit

MEMORY_CLIENT = """
import resource
import cloudburst

def one_big_allocation():
    block = b"x" * (1024 * 2**20)  # 1 GiB, written in one C call: no bytecode boundary until it is done
    return len(block)

ex = cloudburst.Executor(1, memory="256MB", retries=0)
try:
    ex.submit(one_big_allocation).result(timeout=120)
    print("NO ERROR")
except cloudburst.WorkerDiedError as exc:
    print("ERROR", exc.exit_code, repr(str(exc)))
ex.shutdown()
print("PEAK_MIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)  # of the reaped workers
"""


def test_local_memory_limit_holds_against_one_large_c_allocation(tmp_path: Path) -> None:
    client = run_client(MEMORY_CLIENT, tmp_path)
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "ERROR" in lines, out
    assert lines["ERROR"].startswith("137 "), lines["ERROR"]
    assert "OutOfMemoryError: the worker used" in lines["ERROR"] and "memory limit of 256 MiB" in lines["ERROR"]
    assert "RLIMIT_DATA" in lines["ERROR"] or "cgroup v2 memory.max" in lines["ERROR"], "no kernel limit"
    peak = int(lines["PEAK_MIB"])
    assert peak < 400, f"a worker limited to 256 MiB reached {peak} MiB"
