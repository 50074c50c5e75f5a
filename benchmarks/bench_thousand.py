"""A thousand workers: one job, 1,000 emulated Fargate workers, 100,000 items, exact results.

    python benchmarks/bench_thousand.py                 # 1,000 workers, 100,000 items
    python benchmarks/bench_thousand.py --quick         # 100 workers, 5,000 items
    python benchmarks/bench_thousand.py --workers 300 --items 20000

The emulator runs in light mode (every task's worker loop on a thread of the emulator's process) in this
process; the client runs in a process of its own, so that its wall time, CPU and peak memory are its
own. Requests are counted at the emulator's gateway, split by who signed them: the client (the
emulated user's key) or the workers (their task role's).

Emulated AWS runs on this machine's cores with the workers: wall times measure the client and the
emulator together, not Fargate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import cloudburst as cb


def tiny(x: int) -> int:
    return 3 * x + 1


def peak_rss_mib() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that across fork and exec,
    so a child started by a bigger parent reports the parent's."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: no fork-and-exec there


def client(workers: int, items: int) -> None:
    """The client's side, in its own process: prints one JSON line."""
    cpu0 = time.process_time()
    started = time.perf_counter()
    with cb.Executor(workers, backend="fargate", progress=False) as ex:
        futures = ex.map(tiny, range(items))
        results = []
        for n, value in enumerate(futures, 1):
            results.append(value)
            if n % (items // 10) == 0:
                print(f"{time.perf_counter() - started:7.1f} s: {n:,} results", file=sys.stderr, flush=True)
        stats = dict(ex._job.stats)
    wall = time.perf_counter() - started
    report = {
        "exact": results == [3 * x + 1 for x in range(items)],
        "wall": wall,
        "client_cpu": time.process_time() - cpu0,
        "client_peak_rss_mib": peak_rss_mib(),
        "tasks": stats.get("tasks", 0),
        "worker_deaths": stats.get("worker_deaths", 0),
    }
    print(json.dumps(report), flush=True)


def run(workers: int, items: int) -> dict[str, float]:
    from cloudburst.emulator import Emulator  # here: the client's process does not load moto

    with Emulator(light=True, verbose=False) as emu:
        before_all, before_client = sum(emu.calls.values()), sum(emu.client_calls.values())
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--client", str(workers), str(items)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        calls, client_calls = emu.calls, emu.client_calls
        peak_tasks = len(emu.agent.tasks) if emu.agent is not None else 0
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the client failed ({done.returncode}):\n{done.stdout[-3000:]}")
    report: dict[str, float] = json.loads(lines[-1])
    total = sum(calls.values()) - before_all
    by_client = sum(client_calls.values()) - before_client
    report.update(
        workers=workers,
        items=items,
        tasks_launched=peak_tasks,
        requests_client=by_client,
        requests_workers=total - by_client,
        emulator_peak_rss_mib=peak_rss_mib(),
        client_describe_tasks=client_calls.get("ecs.DescribeTasks", 0),
        client_run_task=client_calls.get("ecs.RunTask", 0),
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 workers, 5,000 items")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--client", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(*args.client)
        return
    workers, items = (100, 5000) if args.quick else (args.workers, args.items)
    report = run(workers, items)
    print(f"{workers:,} workers, {items:,} items: exact results: {report['exact']}")
    print(f"  wall time                 {report['wall']:8.1f} s")
    print(f"  client peak RSS           {report['client_peak_rss_mib']:8.0f} MiB")
    print(f"  client CPU                {report['client_cpu']:8.1f} s")
    print(f"  emulator peak RSS         {report['emulator_peak_rss_mib']:8.0f} MiB (moto and every worker loop)")
    print(f"  tasks (chunks)            {report['tasks']:8,}   worker deaths {report['worker_deaths']}")
    print(f"  Fargate tasks launched    {report['tasks_launched']:8,}")
    print(
        f"  requests: client          {report['requests_client']:8,}   (RunTask {report['client_run_task']:,}, "
        f"DescribeTasks {report['client_describe_tasks']:,})"
    )
    print(f"  requests: workers         {report['requests_workers']:8,}")
    if not report["exact"]:
        raise SystemExit("wrong results")


if __name__ == "__main__":
    main()
