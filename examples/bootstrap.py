"""Bootstrap confidence intervals over a pandas data set: each resample on a worker, with its own random stream.

    python examples/bootstrap.py                        # locally, then on Fargate (emulated AWS)
    python examples/bootstrap.py --backend local --replicates 20000 --workers 2
    python examples/bootstrap.py --small                # a quick run: 200 replicates of 2,000 rows
    python examples/bootstrap.py --backend fargate --no-emulate    # your AWS account (after `cloudburst setup`)

The data set is a (synthetic, seeded) trial: patients in a treatment or a control arm, with an age and a
blood-pressure drop. Each bootstrap replicate resamples the patients with replacement and computes three
statistics: the difference in mean drop between the arms, the median drop, and the correlation of age with
drop. The 95 % percentile intervals of the replicates are printed with the point estimates.

The data frame is captured by the function (``functools.partial``), so it moves to the workers once per job,
not once per replicate. With a seed, replicate ``i`` draws from its own stream, so the intervals are the same
whatever the number of workers or the backend.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import numpy as np
import pandas as pd

import cloudburst as cb
from cloudburst.emulator import Emulator

STATISTICS = ("effect", "median drop", "corr(age, drop)")


def make_trial(rows: int, seed: int) -> pd.DataFrame:
    """A synthetic trial: the treatment lowers blood pressure by about 4 mmHg more, less so with age."""
    rng = np.random.default_rng(seed)
    treated = rng.random(rows) < 0.5
    age = rng.integers(30, 80, rows)
    drop = rng.normal(2.0, 6.0, rows) + treated * (6.0 - 0.04 * age)
    return pd.DataFrame({"treated": treated, "age": age, "drop": drop})


def statistics(data: pd.DataFrame) -> tuple[float, float, float]:
    """The three statistics of one (re)sample."""
    means = data.groupby("treated")["drop"].mean()
    return (
        float(means.get(True, np.nan) - means.get(False, np.nan)),
        float(data["drop"].median()),
        float(data["age"].corr(data["drop"])),
    )


def replicate(data: pd.DataFrame, _: int) -> tuple[float, float, float]:
    """One bootstrap replicate: the statistics of a resample with replacement, drawn from this item's stream."""
    return statistics(data.sample(n=len(data), replace=True, random_state=cb.rng()))


def intervals(replicates: list[tuple[float, float, float]], level: float = 0.95) -> np.ndarray:
    """Percentile intervals, one row per statistic: (low, high)."""
    tail = (1 - level) / 2 * 100
    return np.percentile(np.array(replicates), [tail, 100 - tail], axis=0).T


def summarise(data: pd.DataFrame, replicates: list[tuple[float, float, float]]) -> str:
    estimates = statistics(data)
    rows = intervals(replicates)
    return "\n".join(
        f"  {name:<16} {estimate:8.4f}   95% CI {low:8.4f} – {high:8.4f}"
        for name, estimate, (low, high) in zip(STATISTICS, estimates, rows, strict=True)
    )


def run(data: pd.DataFrame, backend: str, replicates: int, workers: int | None, seed: int) -> list[tuple[float, ...]]:
    print(f"Bootstrapping {len(data):,} rows, {replicates:,} replicates on backend={backend!r} (seed={seed})")
    started = time.perf_counter()
    results = cb.map(functools.partial(replicate, data), range(replicates), workers=workers, backend=backend, seed=seed)
    elapsed = time.perf_counter() - started
    print(summarise(data, results))
    print(f"  time             {elapsed:.2f} s for {len(results):,} replicates (including starting the workers)")
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="patients in the data set")
    parser.add_argument("--replicates", type=int, default=5_000)
    parser.add_argument("--small", action="store_true", help="a quick run: 2,000 rows, 200 replicates")
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    parser.add_argument("--backend", choices=["local", "fargate", "both"], default="both")
    parser.add_argument(
        "--emulate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the fargate backend against emulated AWS on this machine (default); --no-emulate uses your account",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.small:
        args.rows, args.replicates = 2_000, 200
    return args


def main() -> None:
    args = parse_args()
    data = make_trial(args.rows, args.seed)
    backends = ["local", "fargate"] if args.backend == "both" else [args.backend]
    outcomes = {}
    for backend in backends:
        emulated = backend == "fargate" and args.emulate
        with Emulator() if emulated else contextlib.nullcontext():
            outcomes[backend] = run(data, backend, args.replicates, args.workers, args.seed)

    first = outcomes[backends[0]]
    if len(outcomes) == 2:
        same = outcomes["local"] == outcomes["fargate"]
        print(f"  reproducible     local and Fargate replicates identical: {same}")
    else:
        # Same seed, one worker, local: the same replicates, since each stream depends on the item alone.
        again = cb.map(functools.partial(replicate, data), range(50), workers=1, seed=args.seed, progress=False)
        same = again == first[:50]
        print(f"  reproducible     first 50 replicates identical on 1 local worker: {same}")
    if not same:
        raise SystemExit("replicates differ between runs with the same seed")


if __name__ == "__main__":
    main()
