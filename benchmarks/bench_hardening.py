"""Hardening: memory returned, no worker outliving its client, no more workers than work.

    python benchmarks/bench_hardening.py            # full sizes (about two minutes)
    python benchmarks/bench_hardening.py --quick    # smaller sizes

Measured in this run, against ProcessPoolExecutor where it does the same job:

1. the client's resident memory after ten large arrays were submitted, returned, read and
   dropped, against where it started;
2. how long workers outlive a client killed with SIGKILL while each runs a task that holds the
   GIL in one long C call (libc ``sleep`` through ``ctypes.PyDLL``);
3. how many Fargate tasks start for 4 items with ``workers=50`` (emulated AWS).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np

import cloudburst as cb


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def echo(x: np.ndarray) -> np.ndarray:
    return x


def memory_returned(make: type[Executor] | None, arrays: int, mib: int) -> tuple[float, float]:
    """(RSS before, RSS after) ten large arguments and results went through an executor that is still open."""
    executor: Executor = make(max_workers=2) if make is not None else cb.Executor(2)
    with executor:
        executor.submit(abs, 1).result()  # workers up before the baseline
        gc.collect()
        before = rss_mib()
        for _ in range(arrays):
            data = np.random.default_rng().random(mib * 2**20 // 8)
            back = executor.submit(echo, data).result()
            assert back.shape == data.shape
            del data, back
        gc.collect()
        after = rss_mib()
    return before, after


CLIENT = """
import ctypes, os, sys, time
{make}

def hold_the_gil(seconds):
    ctypes.PyDLL(None).sleep(seconds)   # one C call; the GIL stays held
    return os.getpid()

def pid():
    return os.getpid()

with executor:
    pids = {{executor.submit(pid).result() for _ in range(20)}}
    futures = [executor.submit(hold_the_gil, {seconds}) for _ in range(2)]
    time.sleep(1.0)
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(600)
"""
MAKERS = {
    "cloudburst": "import cloudburst; executor = cloudburst.Executor(2)",
    "ProcessPoolExecutor": "from concurrent.futures import ProcessPoolExecutor; executor = ProcessPoolExecutor(2)",
}


def outlive_seconds(peer: str, seconds: int, cap: float) -> float:
    """Seconds from SIGKILL of the client until its last worker is gone (``cap`` if they are still there)."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "client.py"
        script.write_text(textwrap.dedent(CLIENT.format(make=MAKERS[peer], seconds=seconds)))
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while time.monotonic() - killed < cap:
            if all(_gone(p) for p in pids):
                return time.monotonic() - killed
            time.sleep(0.02)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return cap


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def workers_started_for_four_items() -> int:
    from cloudburst.emulator import Emulator

    with Emulator(verbose=False), cb.Executor(50, backend="fargate", progress=False) as ex:
        assert list(ex.map(abs, range(-4, 0))) == [4, 3, 2, 1]
        return len(ex._job.resources.launcher.task_ids())  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    arrays, mib = (4, 50) if args.quick else (10, 100)
    print(f"1. client RSS, {arrays} arrays of {mib} MiB submitted, returned, read and dropped (executor still open)")
    for name, make in (("cloudburst", None), ("ProcessPoolExecutor", ProcessPoolExecutor)):
        before, after = memory_returned(make, arrays, mib)
        print(f"   {name:20s} {before:7.0f} MiB -> {after:7.0f} MiB  ({after / before:.2f}×)")
    hold, cap = (20, 25.0) if args.quick else (60, 70.0)
    print(f"2. workers outliving a SIGKILLed client whose tasks hold the GIL for {hold} s")
    results = {peer: outlive_seconds(peer, hold, cap) for peer in MAKERS}
    for peer, seconds in results.items():
        print(
            f"   {peer:20s} {seconds:6.2f} s" + (" (still running: killed by the benchmark)" if seconds >= cap else "")
        )
    print("3. Fargate tasks started for 4 items with workers=50 (emulated AWS)")
    print(f"   cloudburst           {workers_started_for_four_items()} (at most 4 wanted)")


if __name__ == "__main__":
    main()
