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

Emulated AWS answers in microseconds where AWS takes milliseconds: the request
counts carry over to AWS, wall times do not.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import cloudburst as cb
from cloudburst.backends.aws import clients
from cloudburst.emulator import Emulator


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


def row(name: str, ours: str, peer: str, peer_value: str, ratio: str, goal: str, ok: bool) -> list[str]:
    return [name, ours, peer, peer_value, ratio, goal, "PASS" if ok else "MISS"]


def table(rows: list[list[str]]) -> str:
    header = ["target", "cloudburst", "peer", "peer figure", "ratio", "goal", "result"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def timed(label: str, fn: Callable[[], Any]) -> Any:
    print(f"  {label} ...", flush=True)
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and a 10 s cold start")
    args = parser.parse_args()
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
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
