"""The ecosystem front ends (joblib backend, ``cloudburst.Pool``, ``cloudburst.imap``) against their peers, in one run.

    python benchmarks/bench_ecosystem.py            # full sizes (a few minutes)
    python benchmarks/bench_ecosystem.py --quick    # smaller sizes (about a minute)

1. Grid search: ``examples/grid_search.py``'s search (48 random-forest fits, 5,000 samples) under
   ``joblib.parallel_config(backend=..., n_jobs=2)``: joblib's default ``loky`` backend against cloudburst's on
   ``backend="local"``. Both as a user runs them (cloudburst starts its workers for each ``Parallel`` call; loky
   keeps its workers between calls, so after the first repeat it starts none). Goal: ≥ 1.0× loky's speed.
2. ``Pool.map`` over 1,000,000 tiny items (``x + 1``): ``cloudburst.Pool(2)`` against ``multiprocessing.Pool(2)``
   (this platform's default start method). The map call on a started pool is the goal (≥ 1.0×); a pool's whole
   life (start, map, close and join) is printed beside it.
3. ``imap`` over a 10,000,000-item generator: the client's peak memory (the peak resident set of a fresh
   process during the map, less its resident set before it; Linux's ``VmHWM``, reset first) for
   ``cloudburst.imap`` against ``Executor.map``, which lists its input first as the standard library's does.
   Both sum the results as they come, so neither keeps them.

Runs are interleaved (cloudburst, then the peer, then again) so that load from other processes falls on both
alike; the best of the repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudburst
from results_table import table

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2


def add_one(x: int) -> int:
    return x + 1


def ratio_row(target: str, mine: float, peer: str, theirs: float, unit: str = "s") -> list[str]:
    """A row where less is better for both figures: the ratio is the peer's over cloudburst's (speed)."""
    speed = theirs / mine
    return [target, f"{mine:.2f} {unit}", peer, f"{theirs:.2f} {unit}", f"{speed:.2f}×", "≥ 1.0×", _verdict(speed)]


def _verdict(speed: float) -> str:
    return "PASS" if speed >= 1.0 else "MISS"


def best_of(repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each run ``repeats`` times, interleaved; the best time of each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: min(values) for name, values in times.items()}


# ---------------------------------------------------------------------------- 1. grid search


def grid_search_seconds(parallel: dict[str, Any], samples: int) -> float:
    import joblib
    from sklearn.datasets import make_classification

    sys.path.insert(0, str(ROOT / "examples"))
    from grid_search import make_search

    X, y = make_classification(n_samples=samples, n_features=20, n_informative=6, random_state=1)
    search = make_search(trees=10)
    started = time.perf_counter()
    with joblib.parallel_config(**parallel):
        search.fit(X, y)
    return time.perf_counter() - started


def bench_grid_search(samples: int, repeats: int) -> list[list[str]]:
    print(f"[1] grid search, 48 fits on {samples:,} samples, n_jobs={WORKERS}; peer: joblib's loky", flush=True)
    best = best_of(
        repeats,
        {
            "cloudburst": lambda: grid_search_seconds({"backend": "cloudburst", "n_jobs": WORKERS}, samples),
            "loky": lambda: grid_search_seconds({"backend": "loky", "n_jobs": WORKERS}, samples),
        },
    )
    print(f"  cloudburst {best['cloudburst']:.2f} s, loky {best['loky']:.2f} s")
    return [ratio_row("grid search, 48 fits (speed)", best["cloudburst"], "joblib loky", best["loky"])]


# ---------------------------------------------------------------------------- 2. Pool.map


def pool_seconds(make_pool: Callable[[], Any], n: int) -> tuple[float, float]:
    """(the map call on a started pool, the pool's whole life: start, map, close, join)."""
    started = time.perf_counter()
    pool = make_pool()
    pool.map(add_one, range(WORKERS))  # the workers are up
    mapped = time.perf_counter()
    results = pool.map(add_one, range(n))
    map_seconds = time.perf_counter() - mapped
    pool.close()
    pool.join()
    life = time.perf_counter() - started
    if results[-1] != n or len(results) != n:
        raise SystemExit(f"Pool.map over {n} items returned {len(results)} results ending {results[-1:]}")
    return map_seconds, life


def bench_pool(n: int, repeats: int) -> list[list[str]]:
    method = multiprocessing.get_start_method()
    print(f"[2] Pool.map over {n:,} tiny items, {WORKERS} workers; peer: multiprocessing.Pool ({method})", flush=True)
    times: dict[str, list[tuple[float, float]]] = {"cloudburst": [], "multiprocessing": []}
    for _ in range(repeats):
        times["cloudburst"].append(pool_seconds(lambda: cloudburst.Pool(WORKERS), n))
        times["multiprocessing"].append(pool_seconds(lambda: multiprocessing.Pool(WORKERS), n))
    call = {name: min(t[0] for t in values) for name, values in times.items()}
    life = {name: min(t[1] for t in values) for name, values in times.items()}
    print(f"  map call: cloudburst {call['cloudburst']:.3f} s, multiprocessing {call['multiprocessing']:.3f} s")
    print(f"  whole life: cloudburst {life['cloudburst']:.3f} s, multiprocessing {life['multiprocessing']:.3f} s")
    peer = f"multiprocessing.Pool ({method})"
    row = ratio_row(f"Pool.map, {n:,} items (speed)", call["cloudburst"], peer, call["multiprocessing"])
    whole = ratio_row(f"Pool start+map+close, {n:,} items", life["cloudburst"], peer, life["multiprocessing"])
    whole[5], whole[6] = "(shown)", "-"
    return [row, whole]


# ---------------------------------------------------------------------------- 3. imap's memory

# Run in a fresh interpreter per measurement: a process's peak resident set only grows.
_MEMORY_PROBE = """
import json, sys, time
import cloudburst
from cloudburst.streaming import imap

def add_one(x):
    return x + 1

def items(n):
    return (i for i in range(n))  # a generator: its length is not known ahead

def status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

def reset_peak():
    # ru_maxrss would carry the parent's peak across exec; VmHWM is this address space's, and resettable.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")

way, n = sys.argv[1], int(sys.argv[2])
with cloudburst.Executor(workers=2) as ex:
    sum(imap(add_one, range(10_000), executor=ex))  # warm up: lazy imports, workers started
    sum(ex.map(add_one, range(10_000)))
    reset_peak()
    before = status_kib("VmRSS")
    started = time.perf_counter()
    if way == "imap":
        total = sum(imap(add_one, items(n), executor=ex))
    else:
        total = sum(ex.map(add_one, items(n)))
    seconds = time.perf_counter() - started
    grown = status_kib("VmHWM") - before
print(json.dumps({"ok": total == n * (n + 1) // 2, "kib": grown, "seconds": seconds}))
"""


def memory_probe(way: str, n: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, way, str(n)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the {way} memory probe failed:\n{done.stderr[-3000:]}")
    probe: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not probe["ok"]:
        raise SystemExit(f"the {way} memory probe summed the wrong total")
    return probe


def bench_imap_memory(n: int) -> list[list[str]]:
    print(f"[3] imap over a {n:,}-item generator: the client's peak memory; peer: Executor.map", flush=True)
    streamed, listed = memory_probe("imap", n), memory_probe("map", n)
    mib = {name: max(probe["kib"], 1) / 1024 for name, probe in (("imap", streamed), ("map", listed))}
    print(
        f"  imap: +{mib['imap']:.1f} MiB in {streamed['seconds']:.1f} s; "
        f"Executor.map: +{mib['map']:.1f} MiB in {listed['seconds']:.1f} s"
    )
    less = mib["map"] / mib["imap"]
    return [
        [
            f"imap peak memory, {n:,}-item generator",
            f"+{mib['imap']:.1f} MiB",
            "Executor.map",
            f"+{mib['map']:.1f} MiB",
            f"{less:.0f}× less",
            "bounded",
            "PASS" if mib["imap"] < 64 else "MISS",
        ],
        [
            f"imap time, {n:,}-item generator",
            f"{streamed['seconds']:.1f} s",
            "Executor.map",
            f"{listed['seconds']:.1f} s",
            f"{listed['seconds'] / streamed['seconds']:.2f}×",
            "(shown)",
            "-",
        ],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = parser.parse_args(argv)
    samples, grid_repeats, pool_items, pool_repeats, stream_items = (
        (1_000, 1, 200_000, 2, 1_000_000) if args.quick else (5_000, 3, 1_000_000, 3, 10_000_000)
    )
    sizes = "quick" if args.quick else "full"
    print(f"cloudburst ecosystem benchmarks ({sizes} sizes), Python {sys.version.split()[0]}")
    started = time.perf_counter()
    rows = bench_grid_search(samples, grid_repeats)
    rows += bench_pool(pool_items, pool_repeats)
    rows += bench_imap_memory(stream_items)
    print(f"\nResults (measured in this run, {time.perf_counter() - started:.0f} s)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
