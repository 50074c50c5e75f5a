"""Core benchmarks: cloudburst against ProcessPoolExecutor and joblib, measured in the same run.

    python benchmarks/bench_core.py            # full sizes (a few minutes)
    python benchmarks/bench_core.py --quick    # smaller sizes (well under a minute)

Five measurements, each compared with named peers run in this same process, on the
same machine, with the same number of workers:

1. ``cloudburst.map`` over many tiny items, against ``ProcessPoolExecutor.map`` at its
   best chunksize and against ``joblib.Parallel``;
2. ``Executor.submit`` one item at a time, then waiting for all results;
3. the round trip of one small task on a warm executor (median);
4. fan-out of a large numpy array passed as an argument to every task: bytes
   serialized, and wall time;
5. a repeated ``cloudburst.map`` of 100 tiny items (its workers kept warm between calls)
   against a repeated ``joblib.Parallel`` call (its reusable executor keeps its workers too).

Runs are interleaved (cloudburst, then its peers, then again) so that load from other
processes on the machine falls on every contender alike. The best of the repeats is
reported for timings, the median for round trips.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import joblib
import numpy as np

import cloudburst as cb
from cloudburst import warm

# ---------------------------------------------------------------------------- the work


def tiny(x: int) -> int:
    return x + 1


def total(a: np.ndarray[Any, Any], i: int) -> float:
    return float(a[i])


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Sizes:
    workers: int
    map_items: int
    joblib_items: int
    chunksizes: tuple[int, ...]
    map_repeats: int
    submit_items: int
    submit_repeats: int
    round_trips: int
    round_trip_warmup: int
    array_mb: int
    fanout_tasks: int
    fanout_repeats: int
    fanout_peer_repeats: int
    repeated_calls: int


FULL = Sizes(
    workers=2,
    map_items=1_000_000,
    joblib_items=1_000_000,
    chunksizes=(1_000, 5_000, 20_000, 100_000),
    map_repeats=3,
    submit_items=20_000,
    submit_repeats=3,
    round_trips=200,
    round_trip_warmup=20,
    array_mb=200,
    fanout_tasks=200,
    fanout_repeats=3,
    fanout_peer_repeats=1,  # about two minutes for ProcessPoolExecutor alone: not repeated
    repeated_calls=50,
)

QUICK = Sizes(
    workers=2,
    map_items=100_000,
    joblib_items=100_000,
    chunksizes=(1_000, 5_000, 20_000, 100_000),
    map_repeats=2,
    submit_items=2_000,
    submit_repeats=2,
    round_trips=100,
    round_trip_warmup=10,
    array_mb=50,
    fanout_tasks=50,
    fanout_repeats=2,
    fanout_peer_repeats=1,
    repeated_calls=20,
)


# ---------------------------------------------------------------------------- results


@dataclass
class Row:
    """One target: the cloudburst figure, the peer's figure, and how they compare."""

    name: str
    cb_figure: str
    peer: str
    peer_figure: str
    ratio: float
    ratio_label: str
    target: str
    passed: bool


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  {text}", flush=True)


def seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1.0:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def megabytes(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- 1. map over tiny items


def bench_map(sizes: Sizes, report: Report) -> None:
    n = sizes.map_items
    expected_last = n  # tiny(n - 1)
    print(f"\n[1] map over {n:,} tiny items, {sizes.workers} workers (pool start-up and shutdown included)", flush=True)

    def run_cloudburst() -> None:
        out = cb.map(tiny, range(n), workers=sizes.workers, progress=False, keep_warm=0)  # a cold start each time
        check(len(out) == n and out[-1] == expected_last, "cloudburst.map returned wrong results")

    def run_ppe(chunksize: int) -> None:
        with ProcessPoolExecutor(sizes.workers) as ex:
            out = list(ex.map(tiny, range(n), chunksize=chunksize))
        check(len(out) == n and out[-1] == expected_last, "ProcessPoolExecutor.map returned wrong results")

    jn = sizes.joblib_items

    def run_joblib() -> None:
        out = joblib.Parallel(n_jobs=sizes.workers)(joblib.delayed(tiny)(i) for i in range(jn))
        check(len(out) == jn and out[-1] == jn, "joblib returned wrong results")

    cb_times: list[float] = []
    ppe_times: dict[int, list[float]] = {c: [] for c in sizes.chunksizes}
    joblib_times: list[float] = []
    for _ in range(sizes.map_repeats):
        cb_times.append(timed(run_cloudburst))
        for chunksize in sizes.chunksizes:
            ppe_times[chunksize].append(timed(functools.partial(run_ppe, chunksize)))
        joblib_times.append(timed(run_joblib))

    cb_best = min(cb_times)
    report.note(f"cloudburst.map: {', '.join(seconds(t) for t in cb_times)}; best {seconds(cb_best)}")
    for chunksize, times in ppe_times.items():
        report.note(f"ProcessPoolExecutor.map chunksize={chunksize:,}: best {seconds(min(times))}")
    best_chunk = min(ppe_times, key=lambda c: min(ppe_times[c]))
    ppe_best = min(ppe_times[best_chunk])
    joblib_best = min(joblib_times)
    joblib_at_n = joblib_best * n / jn
    if jn == n:
        report.note(f"joblib.Parallel(n_jobs={sizes.workers}) at {jn:,} items: best {seconds(joblib_best)}")
        joblib_peer = f"joblib.Parallel(n_jobs={sizes.workers})"
    else:
        report.note(
            f"joblib.Parallel(n_jobs={sizes.workers}) measured at {jn:,} items: best {seconds(joblib_best)}; "
            f"extrapolated per item to {n:,} items: {seconds(joblib_at_n)}"
        )
        joblib_peer = f"joblib (extrapolated from {jn:,})"
    report.note("joblib's worker processes are reused between calls: its repeats run warm")

    ratio = ppe_best / cb_best
    report.rows.append(
        Row(
            f"map {n:,} tiny items",
            seconds(cb_best),
            f"ProcessPoolExecutor chunksize={best_chunk:,}",
            seconds(ppe_best),
            ratio,
            "speed-up",
            "≥ 1.0×",
            ratio >= 1.0,
        )
    )
    ratio = joblib_at_n / cb_best
    report.rows.append(
        Row(
            f"map {n:,} tiny items",
            seconds(cb_best),
            joblib_peer,
            seconds(joblib_at_n),
            ratio,
            "speed-up",
            "≥ 10×",
            ratio >= 10.0,
        )
    )


# ---------------------------------------------------------------------------- 2. submit one at a time


def make_cloudburst(workers: int) -> cb.Executor:
    return cb.Executor(workers=workers)


def make_ppe(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers)


def warmed(factory: Callable[[int], Executor], workers: int) -> Executor:
    """An executor whose workers have all started and run a call."""
    ex = factory(workers)
    wait([ex.submit(tiny, i) for i in range(4 * workers)])
    return ex


def bench_submit(sizes: Sizes, report: Report) -> None:
    n = sizes.submit_items
    print(f"\n[2] submit {n:,} items one at a time, then wait for all; warm executors", flush=True)

    def burst(ex: Executor) -> float:
        gc.collect()
        start = time.perf_counter()
        futures = [ex.submit(tiny, i) for i in range(n)]
        wait(futures)
        elapsed = time.perf_counter() - start
        check(futures[-1].result() == n, "submit returned a wrong result")
        return elapsed

    cb_times: list[float] = []
    ppe_times: list[float] = []
    for _ in range(sizes.submit_repeats):
        contenders: tuple[tuple[Callable[[int], Executor], list[float]], ...] = (
            (make_cloudburst, cb_times),
            (make_ppe, ppe_times),
        )
        for factory, times in contenders:
            ex = warmed(factory, sizes.workers)
            try:
                times.append(burst(ex))
            finally:
                ex.shutdown(wait=True)
    report.note(f"cloudburst.Executor: {', '.join(seconds(t) for t in cb_times)}")
    report.note(f"ProcessPoolExecutor: {', '.join(seconds(t) for t in ppe_times)}")
    cb_best, ppe_best = min(cb_times), min(ppe_times)
    ratio = ppe_best / cb_best
    report.rows.append(
        Row(
            f"submit {n:,} one at a time",
            seconds(cb_best),
            f"ProcessPoolExecutor({sizes.workers})",
            seconds(ppe_best),
            ratio,
            "speed-up",
            "≥ 1.0×",
            ratio >= 1.0,
        )
    )


# ---------------------------------------------------------------------------- 3. round trip


def bench_round_trip(sizes: Sizes, report: Report) -> None:
    print(
        f"\n[3] round trip of submit(tiny, 1).result() on warm executors: {sizes.round_trips} samples each, "
        "alternating",
        flush=True,
    )
    cb_ex = warmed(make_cloudburst, sizes.workers)
    ppe_ex = warmed(make_ppe, sizes.workers)
    samples: dict[str, list[float]] = {"cb": [], "ppe": []}
    try:
        for _ in range(sizes.round_trip_warmup):
            cb_ex.submit(tiny, 1).result()
            ppe_ex.submit(tiny, 1).result()
        gc.collect()
        for _ in range(sizes.round_trips):
            for key, ex in (("cb", cb_ex), ("ppe", ppe_ex)):
                start = time.perf_counter()
                ex.submit(tiny, 1).result()
                samples[key].append(time.perf_counter() - start)
    finally:
        cb_ex.shutdown(wait=True)
        ppe_ex.shutdown(wait=True)
    for key, label in (("cb", "cloudburst.Executor"), ("ppe", "ProcessPoolExecutor")):
        data = sorted(samples[key])
        p90 = data[int(0.9 * (len(data) - 1))]
        report.note(f"{label}: median {seconds(statistics.median(data))}, min {seconds(data[0])}, p90 {seconds(p90)}")
    cb_median = statistics.median(samples["cb"])
    ppe_median = statistics.median(samples["ppe"])
    ratio = cb_median / ppe_median
    report.rows.append(
        Row(
            "round trip, one small task (median)",
            seconds(cb_median),
            f"ProcessPoolExecutor({sizes.workers})",
            seconds(ppe_median),
            ratio,
            "cb / peer",
            "≤ 1.2×",
            ratio <= 1.2,
        )
    )


# ---------------------------------------------------------------------------- 4. fan-out of a large array


def bench_fanout(sizes: Sizes, report: Report) -> None:
    tasks = sizes.fanout_tasks
    arr = np.random.default_rng(0).random(sizes.array_mb * 2**20 // 8)
    expected = arr[:tasks].tolist()
    print(
        f"\n[4] fan-out: a {megabytes(arr.nbytes)} float64 array passed to each of {tasks} tasks, "
        f"map(total, [arr] * {tasks}, range({tasks})); executor start-up and shutdown included",
        flush=True,
    )
    serialized: list[int] = []

    def run_cloudburst() -> None:
        with cb.Executor(workers=sizes.workers) as ex:
            out = list(ex.map(total, [arr] * tasks, range(tasks)))
        serialized.append(ex.bytes_uploaded)
        check(out == expected, "cloudburst fan-out returned wrong results")

    def run_ppe() -> None:
        with ProcessPoolExecutor(sizes.workers) as ex:
            out = list(ex.map(total, [arr] * tasks, range(tasks)))
        check(out == expected, "ProcessPoolExecutor fan-out returned wrong results")

    cb_times: list[float] = []
    ppe_times: list[float] = []
    for repeat in range(max(sizes.fanout_repeats, sizes.fanout_peer_repeats)):
        if repeat < sizes.fanout_repeats:
            cb_times.append(timed(run_cloudburst))
        if repeat < sizes.fanout_peer_repeats:
            ppe_times.append(timed(run_ppe))
    report.note(
        f"cloudburst.Executor: {', '.join(seconds(t) for t in cb_times)}; "
        f"bytes serialized: {', '.join(f'{b:,}' for b in serialized)}"
    )
    report.note(
        f"ProcessPoolExecutor: {', '.join(seconds(t) for t in ppe_times)} "
        f"({len(ppe_times)} run{'s' if len(ppe_times) != 1 else ''}: it pickles the array once per task)"
    )
    nbytes = max(serialized)
    ratio = nbytes / arr.nbytes
    report.rows.append(
        Row(
            f"fan-out {megabytes(arr.nbytes)} × {tasks}: bytes",
            megabytes(nbytes),
            "the array's size",
            megabytes(arr.nbytes),
            ratio,
            "cb / peer",
            "≤ 1.1×",
            ratio <= 1.1,
        )
    )
    cb_best, ppe_best = min(cb_times), min(ppe_times)
    ratio = ppe_best / cb_best
    report.rows.append(
        Row(
            f"fan-out {megabytes(arr.nbytes)} × {tasks}: wall time",
            seconds(cb_best),
            f"ProcessPoolExecutor({sizes.workers})",
            seconds(ppe_best),
            ratio,
            "speed-up",
            "≥ 5×",
            ratio >= 5.0,
        )
    )


# ---------------------------------------------------------------------------- 5. repeated small maps


def bench_repeated_map(sizes: Sizes, report: Report) -> None:
    n, calls = 100, sizes.repeated_calls
    print(
        f"\n[5] a repeated map of {n} tiny items, {sizes.workers} workers: {calls} calls each, alternating, "
        "after one call each to start the workers (median)",
        flush=True,
    )
    expected = [tiny(i) for i in range(n)]

    def run_cloudburst() -> None:
        check(cb.map(tiny, range(n), workers=sizes.workers, progress=False) == expected, "cloudburst.map was wrong")

    def run_joblib() -> None:
        out = joblib.Parallel(n_jobs=sizes.workers)(joblib.delayed(tiny)(i) for i in range(n))
        check(out == expected, "joblib returned wrong results")

    samples: dict[str, list[float]] = {"cb": [], "joblib": []}
    run_cloudburst()
    run_joblib()
    gc.collect()
    for _ in range(calls):
        for key, fn in (("cb", run_cloudburst), ("joblib", run_joblib)):
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
    warm.shutdown()
    for key, label in (("cb", "cloudburst.map"), ("joblib", f"joblib.Parallel(n_jobs={sizes.workers})")):
        data = sorted(samples[key])
        report.note(f"{label}: median {seconds(statistics.median(data))}, min {seconds(data[0])}")
    cb_median, joblib_median = statistics.median(samples["cb"]), statistics.median(samples["joblib"])
    ratio = joblib_median / cb_median
    report.rows.append(
        Row(
            f"repeated map of {n} tiny items (median)",
            seconds(cb_median),
            f"joblib.Parallel(n_jobs={sizes.workers})",
            seconds(joblib_median),
            ratio,
            "speed-up",
            "≥ 1.0×",
            ratio >= 1.0,
        )
    )


# ---------------------------------------------------------------------------- output


def table(rows: Sequence[Row]) -> Iterator[str]:
    header = ("target", "cloudburst", "peer", "peer figure", "ratio", "goal", "result")
    cells = [
        (
            r.name,
            r.cb_figure,
            r.peer,
            r.peer_figure,
            f"{r.ratio:.2f}× ({r.ratio_label})",
            r.target,
            "PASS" if r.passed else "MISS",
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    yield "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for cell in cells:
        yield "  ".join(str(c).ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip()


def environment() -> str:
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    import multiprocessing

    return (
        f"cloudburst {cb.__version__}, joblib {joblib.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, start method {multiprocessing.get_start_method()!r}, load average {load}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: finishes in well under a minute")
    parser.add_argument("--workers", type=int, default=None, help="workers for every contender (default: 2)")
    parser.add_argument(
        "--joblib-items",
        type=int,
        default=None,
        help="measure joblib at this many items and extrapolate per item (default: the full item count)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.workers is not None:
        sizes = replace(sizes, workers=args.workers)
    if args.joblib_items is not None:
        sizes = replace(sizes, joblib_items=min(args.joblib_items, sizes.map_items))

    print(f"cloudburst core benchmarks ({'quick' if args.quick else 'full'} sizes)")
    print(environment(), flush=True)
    report = Report()
    started = time.perf_counter()
    bench_map(sizes, report)
    bench_submit(sizes, report)
    bench_round_trip(sizes, report)
    bench_fanout(sizes, report)
    bench_repeated_map(sizes, report)

    print(f"\nResults ({sizes.workers} workers each; measured in this run, {seconds(time.perf_counter() - started)})")
    for line in table(report.rows):
        print(line)
    missed = sum(not r.passed for r in report.rows)
    print(f"\n{len(report.rows) - missed} of {len(report.rows)} targets met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
