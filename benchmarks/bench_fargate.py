"""Fargate-path benchmarks against emulated AWS (moto + the ECS agent emulator), measured in one run.

    python benchmarks/bench_fargate.py            # full sizes (about two minutes: one 45 s cold start)
    python benchmarks/bench_fargate.py --quick    # smaller sizes, 10 s cold start

1. AWS requests per item for ``cloudburst.map`` over 10,000 tiny items on 8 workers,
   counted twice: by botocore's event hooks in the client, and by the emulated server
   (which sees the workers' requests too). The peer is the protocol of one message and
   one launch per item (staRburst's design), measured here as ``chunksize=1`` on the
   same backend, on fewer items, per item.
2. Client-side dispatch time for those items: the time the client spends cutting,
   sealing and sending tasks.
3. Time to the first result with ``local_workers=1`` and without, with the emulated
   Fargate cold start set to 45 s (image pull and task start).
4. Per worker, at two fleet sizes (workers on threads: the emulator's light mode), with the
   client in a process of its own and the default poll interval (2 s): the client's CPU
   (seconds per worker per minute, busy on a map and idle with its workers up), the requests
   per second the client makes (DescribeTasks, at most 100 tasks per call; heartbeats; its
   result polling), and the requests per second idle workers make (task polling, control
   reads). Requests are counted at the emulator's gateway, split by who signed them.

Emulated AWS answers in microseconds where AWS takes milliseconds: the request
counts carry over to AWS, wall times do not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import cloudburst as cb
from cloudburst.backends.aws import clients
from cloudburst.emulator import Emulator
from results_table import table


def tiny(x: int) -> int:
    return x + 1


def requests_now(emu: Emulator) -> tuple[int, int]:
    """(requests this process sent, requests the emulated server answered)."""
    return sum(clients.requests.values()), sum(emu.calls.values())


def measure_map(emu: Emulator, items: int, workers: int, chunksize: int | None) -> dict[str, float]:
    before_client, before_server = requests_now(emu)
    started = time.perf_counter()
    with cb.Executor(workers, backend="fargate", progress=False) as ex:
        results = list(ex.map(tiny, range(items), chunksize=chunksize))
        dispatch = ex._job.dispatch_seconds
    wall = time.perf_counter() - started
    if results != [x + 1 for x in range(items)]:
        raise SystemExit("wrong results")
    after_client, after_server = requests_now(emu)
    return {
        "items": items,
        "client_requests": after_client - before_client,
        "server_requests": after_server - before_server,
        "dispatch": dispatch,
        "wall": wall,
    }


def first_result(emu: Emulator, local_workers: int) -> float:
    started = time.perf_counter()
    with cb.Executor(2, backend="fargate", local_workers=local_workers, progress=False) as ex:
        ex.submit(tiny, 1).result()
        elapsed = time.perf_counter() - started
        ex.shutdown(wait=False, cancel_futures=True)
    return elapsed


def idle_client(workers: int, seconds: float) -> None:
    """Section 4's client, in a process of its own: a map that brings every worker up, then ``seconds`` idle
    with the workers up. Prints MARK lines at the idle window's ends, then one JSON line."""
    with cb.Executor(workers, backend="fargate", progress=False) as ex:
        cpu, started = time.process_time(), time.perf_counter()
        if list(ex.map(tiny, range(workers * 40))) != [x + 1 for x in range(workers * 40)]:
            raise SystemExit("wrong results")
        busy_cpu, busy_wall = time.process_time() - cpu, time.perf_counter() - started
        print("MARK start", flush=True)
        cpu = time.process_time()
        time.sleep(seconds)
        idle_cpu = time.process_time() - cpu
        print("MARK end", flush=True)
        running = ex._job.resources.launcher.running()
    print(json.dumps({"busy_cpu": busy_cpu, "busy_wall": busy_wall, "idle_cpu": idle_cpu, "running": running}))


def per_worker(emu: Emulator, workers: int, seconds: float) -> dict[str, float]:
    """Section 4 at one fleet size: what one worker costs the client, and what it asks of AWS, per second."""
    command = [sys.executable, os.path.abspath(__file__), "--idle-client", str(workers), str(seconds)]
    env = {**os.environ, "CLOUDBURST_POLL_INTERVAL": "2.0"}  # the default, not the emulator's 0.2 s
    marks: dict[str, tuple[dict[str, int], dict[str, int], int]] = {}
    report: dict[str, float] = {}
    with emu.light_mode(), subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("MARK "):
                marks[line.split()[1]] = (emu.calls, emu.client_calls, len(emu.workers()))
            elif line.startswith("{"):
                report = json.loads(line)
    if child.returncode != 0 or set(marks) != {"start", "end"}:
        raise SystemExit(f"the idle client failed ({child.returncode})")
    (all0, client0, up), (all1, client1, up_end) = marks["start"], marks["end"]

    def rate(counts1: dict[str, int], counts0: dict[str, int], *names: str) -> float:
        keys = names or tuple(counts1)
        return sum(counts1.get(k, 0) - counts0.get(k, 0) for k in keys) / seconds

    client_rate = rate(client1, client0)
    return {
        "workers": workers,
        "up": min(up, up_end),
        "busy_cpu": report["busy_cpu"] / workers / (report["busy_wall"] / 60),
        "idle_cpu": report["idle_cpu"] / workers / (seconds / 60),
        "client_rps": client_rate,
        "describe_rps": rate(client1, client0, "ecs.DescribeTasks"),
        "heartbeat_rps": rate(client1, client0, "s3.PUTObject"),
        "worker_rps": (rate(all1, all0) - client_rate) / workers,
        "worker_receive_rps": (rate(all1, all0, "sqs.ReceiveMessage") - rate(client1, client0, "sqs.ReceiveMessage"))
        / workers,
        "describe_max": math.ceil(workers / 100) / 2.0,  # DescribeTasks per second at ≤ 100 tasks per call
    }


def per_worker_lines(found: dict[str, float]) -> list[str]:
    n = found["workers"]
    return [
        f"  {n:.0f} workers ({found['up']:.0f} up through the idle window):",
        f"    client CPU per worker: {found['busy_cpu']:.3f} s/min busy, {found['idle_cpu']:.4f} s/min idle",
        f"    client requests: {found['client_rps']:.2f}/s in all = {found['client_rps'] / n:.4f}/s per worker; "
        f"DescribeTasks {found['describe_rps']:.2f}/s (at most {found['describe_max']:.1f}/s: ≤ 100 tasks per call), "
        f"heartbeat PutObject {found['heartbeat_rps']:.3f}/s",
        f"    idle worker requests: {found['worker_rps']:.3f}/s per worker, of which ReceiveMessage "
        f"{found['worker_receive_rps']:.3f}/s",
    ]


def row(name: str, ours: str, peer: str, peer_value: str, ratio: str, goal: str, ok: bool) -> list[str]:
    return [name, ours, peer, peer_value, ratio, goal, "PASS" if ok else "MISS"]


def timed(label: str, fn: Callable[[], Any]) -> Any:
    print(f"  {label} ...", flush=True)
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and a 10 s cold start")
    parser.add_argument("--only-per-worker", action="store_true", help="section 4 alone")
    parser.add_argument("--idle-client", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.idle_client:
        idle_client(int(args.idle_client[0]), args.idle_client[1])
        return
    fleets, window = ((10, 50), 20.0) if args.quick else ((20, 200), 60.0)
    if args.only_per_worker:
        with Emulator(verbose=False) as emu:
            for n in fleets:
                print("\n".join(per_worker_lines(per_worker(emu, n, window))), flush=True)
        return
    items, peer_items, cold = (2_000, 200, 10.0) if args.quick else (10_000, 1_000, 45.0)
    workers = 8

    print("cloudburst Fargate-path benchmarks against EMULATED AWS (moto + ECS agent emulator on this machine)")
    with Emulator(verbose=False) as emu:
        print(f"[1,2] map over {items:,} tiny items on {workers} workers; peer: one task per item on {peer_items:,}")
        ours = timed("cloudburst.map, automatic chunks", lambda: measure_map(emu, items, workers, None))
        peer = timed("one message per item (chunksize=1)", lambda: measure_map(emu, peer_items, workers, 1))
        ours_per_item = ours["server_requests"] / ours["items"]
        ours_client_per_item = ours["client_requests"] / ours["items"]
        peer_per_item = peer["server_requests"] / peer["items"]
        from_workers = ours["server_requests"] - ours["client_requests"]
        print(
            f"  cloudburst: {ours['client_requests']:.0f} client + {from_workers:.0f} worker requests = "
            f"{ours_per_item:.4f} per item; dispatch {ours['dispatch']:.3f} s; wall {ours['wall']:.2f} s"
        )
        print(
            f"  one per item: {peer['server_requests']:.0f} requests = {peer_per_item:.2f} per item; "
            f"wall {peer['wall']:.2f} s for {peer_items:,} items"
        )

        assert emu.agent is not None
        emu.agent.cold_start = cold
        print(f"[3] time to first result, emulated cold start {cold:.0f} s")
        with_local = timed("local_workers=1", lambda: first_result(emu, 1))
        without = timed("local_workers=0", lambda: first_result(emu, 0))
        print(f"  with local_workers=1: {with_local:.2f} s; without: {without:.2f} s")
        emu.agent.cold_start = 0.0
        print(f"[4] per worker, {window:.0f} s idle window, workers on threads (light mode), poll interval 2 s")
        fleet = [per_worker(emu, n, window) for n in fleets]
        for found in fleet:
            print("\n".join(per_worker_lines(found)))

    rows = [
        row(
            f"requests per item, {items:,} items",
            f"{ours_per_item:.4f}",
            "one message per item",
            f"{peer_per_item:.2f}",
            f"{peer_per_item / ours_per_item:.0f}× fewer",
            "≤ 0.05",
            ours_per_item <= 0.05,
        ),
        row(
            "  of which from the client",
            f"{ours_client_per_item:.4f}",
            "(botocore event hooks)",
            "",
            "",
            "",
            True,
        ),
        row(
            f"client dispatch time, {items:,} items",
            f"{ours['dispatch']:.3f} s",
            "one message per item",
            f"{peer['dispatch'] / peer_items * items:.2f} s (scaled)",
            f"{peer['dispatch'] / peer_items * items / max(ours['dispatch'], 1e-9):.0f}× less",
            "≤ 2 s",
            ours["dispatch"] <= 2.0,
        ),
        row(
            f"first result, {cold:.0f} s cold start",
            f"{with_local:.2f} s",
            "local_workers=0",
            f"{without:.2f} s",
            f"{without / with_local:.0f}× sooner",
            "sooner",
            with_local < without,
        ),
    ]
    small, large = fleet
    rows.append(
        row(
            f"client CPU per worker idle, {large['workers']:.0f} vs {small['workers']:.0f} workers",
            f"{large['idle_cpu']:.4f} s/min",
            f"{small['workers']:.0f} workers",
            f"{small['idle_cpu']:.4f} s/min",
            f"{large['idle_cpu'] / max(small['idle_cpu'], 1e-9):.2f}×",
            "does not grow with workers (≤ 1.5×)",
            large["idle_cpu"] <= 1.5 * small["idle_cpu"],
        )
    )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
