"""Pipelines of stages (``cloudburst.stage`` / ``cloudburst.compute``), measured in one run.

    python benchmarks/bench_stages.py            # full sizes (a few minutes)
    python benchmarks/bench_stages.py --quick    # 200 tiny stages instead of 1,000 (about a minute)

1. Scheduling overhead: 1,000 tiny stages (``inc(x) = x + 1``), as a wide fan-out (1,000 independent calls
   gathered by one stage taking the list of their nodes) and as a chain 1,000 long, on ``backend="local"``
   with 2 workers, with ``cache=False`` and with a cold cache (every lookup a miss, every result recorded),
   against ``dask.delayed`` with ``scheduler="processes", num_workers=2`` on the same graph. Both include
   starting their worker processes. Goal: ≤ 1.0× dask's time.
2. A fully cached rerun of a 100-stage pipeline (10 sources → 80 middle → 10 sinks) on emulated AWS: seconds,
   and AWS requests per stage, counted by botocore's ``before-send`` hook on the sessions cloudburst uses
   (``cloudburst.backends.aws.clients.requests``) and at the emulated server. Goal: ≤ 1 request per stage.
   Both runs are in this process, so the cache key's one read per process (SSM) falls in the first.
3. Early cutoff: ``a → b → {c, d}``. ``a``'s code is edited (its module file rewritten and reloaded) so that
   it runs again but returns identical bytes: its dependents must not run again (0 reruns, read from the run
   report). Two controls, on the same pipeline: no edit (nothing runs) and an edit that changes ``a``'s value
   (everything runs).

Runs are interleaved (cloudburst, then dask, then again) so that load from other processes falls on both
alike; the best of the repeats is reported. Emulated AWS answers in microseconds where AWS takes
milliseconds: the request counts carry over to AWS, wall times do not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cloudpickle
import dask

import cloudburst as cb
from results_table import table

if TYPE_CHECKING:
    from cloudburst.emulator import Emulator

WORKERS = 2

# ---------------------------------------------------------------------------- the work


def add_one(x: int) -> int:
    return x + 1


def add_up(xs: list[int]) -> int:
    return sum(xs)


inc = cb.stage(add_one, name="inc")
gather = cb.stage(add_up, name="gather")


@cb.stage
def source(i: int) -> list[int]:
    return list(range(i, i + 100))


@cb.stage
def middle(values: list[int], j: int) -> int:
    return sum(values) * j


@cb.stage
def sink(values: list[int]) -> int:
    return sum(values)


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def cache_folder() -> Iterator[Path]:
    """A fresh, empty local cache (``CLOUDBURST_CACHE_DIR``) for the block: a cold cache."""
    before = os.environ.get("CLOUDBURST_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as folder:
        os.environ["CLOUDBURST_CACHE_DIR"] = folder
        try:
            yield Path(folder)
        finally:
            if before is None:
                os.environ.pop("CLOUDBURST_CACHE_DIR", None)
            else:
                os.environ["CLOUDBURST_CACHE_DIR"] = before


def statuses(report: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in report.stages:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


# ---------------------------------------------------------------------------- 1. scheduling overhead


def fan_out(n: int, call: Callable[[int], Any], collect: Callable[[list[Any]], Any]) -> Any:
    return collect([call(i) for i in range(n)])


def chain(n: int, call: Callable[[Any], Any]) -> Any:
    node = call(0)
    for _ in range(n - 1):
        node = call(node)
    return node


def time_cloudburst(shape: str, n: int, cache: bool) -> float:
    """Seconds for one compute of the graph, workers started inside, with a cold cache when ``cache``."""
    with cache_folder():
        started = time.perf_counter()
        node = fan_out(n, inc, gather) if shape == "fan-out" else chain(n, inc)
        value, report = cb.compute(node, backend="local", workers=WORKERS, cache=cache, progress=False, report=True)
        elapsed = time.perf_counter() - started
    check(shape, n, value)
    if statuses(report) != {"ran": len(report.stages)}:  # a cold cache: nothing may be served from it
        raise SystemExit(f"{shape}: not every stage ran: {statuses(report)}")
    return elapsed


def time_dask(shape: str, n: int) -> float:
    started = time.perf_counter()
    task = dask.delayed(add_one)
    node = fan_out(n, task, dask.delayed(add_up)) if shape == "fan-out" else chain(n, task)
    (value,) = dask.compute(node, scheduler="processes", num_workers=WORKERS)
    elapsed = time.perf_counter() - started
    check(shape, n, value)
    return elapsed


def check(shape: str, n: int, value: Any) -> None:
    expected = sum(range(1, n + 1)) if shape == "fan-out" else n
    if value != expected:
        raise SystemExit(f"{shape}: wrong result {value!r}, expected {expected!r}")


def bench_overhead(n: int, repeats: int) -> list[list[str]]:
    rows = []
    for shape in ("fan-out", "chain"):
        print(f"[1] {n:,} tiny stages as a {shape}, {WORKERS} local workers; peer: dask.delayed, processes", flush=True)
        times: dict[str, list[float]] = {"off": [], "cold": [], "dask": []}
        for _ in range(repeats):  # interleaved
            times["off"].append(time_cloudburst(shape, n, cache=False))
            times["cold"].append(time_cloudburst(shape, n, cache=True))
            times["dask"].append(time_dask(shape, n))
        best = {k: min(v) for k, v in times.items()}
        print(f"  cache=False {best['off']:.2f} s, cold cache {best['cold']:.2f} s, dask {best['dask']:.2f} s")
        for label, key in (("cache=False", "off"), ("cold cache", "cold")):
            ratio = best[key] / best["dask"]
            rows.append(
                [
                    f"{n:,} stages, {shape}, {label}",
                    f"{best[key]:.2f} s",
                    "dask.delayed processes",
                    f"{best['dask']:.2f} s",
                    f"{ratio:.2f}×",
                    "≤ 1.0×",
                    "PASS" if ratio <= 1.0 else "MISS",
                ]
            )
    return rows


# ---------------------------------------------------------------------------- 2. cached rerun on emulated AWS


def hundred_stages() -> list[Any]:
    """10 sources → 80 middle (8 per source) → 10 sinks (each sums 8 middles): 100 stage calls."""
    sources = [source(i) for i in range(10)]
    middles = [middle(sources[j % 10], j) for j in range(80)]
    return [sink([middles[j] for j in range(80) if j % 10 == k]) for k in range(10)]


def bench_cached_rerun(emu: Emulator) -> list[list[str]]:
    from cloudburst.backends.aws import clients  # here: dask's spawned workers import this module (see main)

    print("[2] a fully cached rerun of 100 stages on emulated AWS", flush=True)
    started = time.perf_counter()
    first, report = cb.compute(*hundred_stages(), backend="fargate", workers=4, progress=False, report=True)
    print(f"  first run: {time.perf_counter() - started:.1f} s, {statuses(report)}", flush=True)
    client_before, server_before = dict(clients.requests), emu.calls
    started = time.perf_counter()
    again, report = cb.compute(*hundred_stages(), backend="fargate", workers=4, progress=False, report=True)
    rerun = time.perf_counter() - started
    client = {k: v - client_before.get(k, 0) for k, v in clients.requests.items() if v != client_before.get(k, 0)}
    server = sum(emu.calls.values()) - sum(server_before.values())
    if again != first:
        raise SystemExit("the cached rerun returned other values")
    stages = len(report.stages)
    cached = statuses(report).get("cached", 0)
    per_stage = sum(client.values()) / stages
    print(f"  rerun: {rerun:.2f} s, {cached} of {stages} stages cached; client requests {client}; server saw {server}")
    return [
        [f"cached rerun, {stages} stages, emulated AWS", f"{rerun:.2f} s", "", "", "", "", ""],
        [
            "  AWS requests per stage (client)",
            f"{per_stage:.2f}",
            "",
            "",
            "",
            "≤ 1",
            "PASS" if per_stage <= 1 and cached == stages else "MISS",
        ],
        ["  AWS requests per stage (server)", f"{server / stages:.2f}", "", "", "", "", ""],
    ]


# ---------------------------------------------------------------------------- 3. early cutoff

PIPELINE = """
import cloudburst as cb


@cb.stage
def a():
    {body}


@cb.stage
def b(values):
    return sum(values)


@cb.stage
def c(total):
    return total * 2


@cb.stage
def d(total):
    return total + 1
"""

BODIES = {
    "original": "return list(range(1000))",
    "same bytes": "values = [i for i in range(1000)]  # rewritten; the same list\n    return values",
    "other bytes": "return list(range(1001))",
}


def load_pipeline(folder: Path, body: str) -> ModuleType:
    """Write the pipeline's module with ``a``'s ``body`` and (re)load it, as a user's edit and rerun would."""
    (folder / "cutoff_pipeline.py").write_text(PIPELINE.format(body=body))
    importlib.invalidate_caches()
    module = sys.modules.get("cutoff_pipeline")
    module = importlib.reload(module) if module is not None else importlib.import_module("cutoff_pipeline")
    cloudpickle.register_pickle_by_value(module)  # the workers cannot import it from the temporary folder
    return module


def rerun_after(folder: Path, body: str) -> dict[str, str]:
    pipeline = load_pipeline(folder, body)
    total = pipeline.b(pipeline.a())
    _, report = cb.compute(pipeline.c(total), pipeline.d(total), backend="local", workers=WORKERS, report=True)
    return {record.name.rsplit(":", 1)[-1]: record.status for record in report.stages}


def bench_early_cutoff() -> list[list[str]]:
    print("[3] early cutoff: a → b → {c, d}; a's code edited", flush=True)
    sys.dont_write_bytecode = True  # a reload must see the edited file, even within the same second
    with tempfile.TemporaryDirectory(prefix="bench-cutoff-") as folder, cache_folder():
        sys.path.insert(0, folder)
        try:
            rerun_after(Path(folder), BODIES["original"])
            found = {kind: rerun_after(Path(folder), body) for kind, body in BODIES.items() if kind != "original"}
            unchanged = rerun_after(Path(folder), BODIES["other bytes"])  # the code of the last run: no edit
        finally:
            sys.path.remove(folder)
    rows = []
    for kind, expected in (("same bytes", 0), ("other bytes", 3)):
        ran = found[kind]
        dependents = sum(ran[name] == "ran" for name in ("b", "c", "d"))
        print(f"  a edited, {kind}: {ran}")
        ok = ran["a"] == "ran" and dependents == expected
        rows.append(
            [f"early cutoff: a edited, {kind}", f"{dependents} of 3 reran", "", "", "", f"{expected}", ok_text(ok)]
        )
    reruns = sum(status == "ran" for status in unchanged.values())
    print(f"  no edit: {unchanged}")
    rows.append(["  control: no edit", f"{reruns} of 4 ran", "", "", "", "0", ok_text(reruns == 0)])
    return rows


def ok_text(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200 tiny stages instead of 1,000, one repeat")
    args = parser.parse_args(argv)
    n, repeats = (200, 1) if args.quick else (1_000, 2)
    print(f"cloudburst stage benchmarks ({'quick' if args.quick else 'full'} sizes), Python {sys.version.split()[0]}")
    started = time.perf_counter()
    rows = bench_overhead(n, repeats)
    # Imported here, not at the top: dask's process pool spawns its workers, which import this module again, and
    # they should not pay for the emulator (moto, boto3) in dask's time.
    from cloudburst.emulator import Emulator

    with Emulator(verbose=False) as emu:
        rows += bench_cached_rerun(emu)
    rows += bench_early_cutoff()
    print(f"\nResults (measured in this run, {time.perf_counter() - started:.0f} s)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
