"""Monte Carlo portfolio simulation: 10,000 one-year paths, each with its own reproducible random stream.

    python examples/monte_carlo.py                      # locally, then on Fargate (emulated AWS)
    python examples/monte_carlo.py --backend local --simulations 100000 --workers 2
    python examples/monte_carlo.py --backend fargate --no-emulate    # your AWS account (after `cloudburst setup`)

Each simulation draws 252 daily returns (mean 0.03 %, sd 2 %) and reports the
portfolio's final value (starting at 1.0) and its annualised Sharpe ratio.
With a seed, the numbers are the same whatever the number of workers.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

import cloudburst as cb
from cloudburst.emulator import Emulator


def simulate_portfolio(_: int) -> tuple[float, float]:
    returns = cb.rng().normal(loc=0.0003, scale=0.02, size=252)
    prices = np.cumprod(1 + returns)
    sharpe = returns.mean() / returns.std(ddof=1) * np.sqrt(252)
    return float(prices[-1]), float(sharpe)


def summarise(results: list[tuple[float, float]]) -> str:
    final = np.array([r[0] for r in results])
    sharpe = np.array([r[1] for r in results])
    p5, p50, p95 = np.percentile(final, [5, 50, 95])
    return "\n".join(
        [
            f"  final value   mean {final.mean():.4f}   median {p50:.4f}   5%–95% {p5:.4f} – {p95:.4f}",
            f"  P(loss)       {np.mean(final < 1.0):.1%}",
            f"  Sharpe ratio  mean {sharpe.mean():.3f}   sd {sharpe.std():.3f}",
        ]
    )


def run(backend: str, simulations: int, workers: int | None, seed: int) -> list[tuple[float, float]]:
    print(f"Running {simulations:,} simulations on backend={backend!r} (seed={seed})")
    started = time.perf_counter()
    results = cb.map(simulate_portfolio, range(simulations), workers=workers, backend=backend, seed=seed)
    elapsed = time.perf_counter() - started
    print(summarise(results))
    print(f"  time          {elapsed:.2f} s for {len(results):,} simulations (including starting the workers)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    parser.add_argument("--backend", choices=["local", "fargate", "both"], default="both")
    parser.add_argument(
        "--emulate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the fargate backend against emulated AWS on this machine (default); --no-emulate uses your account",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    backends = ["local", "fargate"] if args.backend == "both" else [args.backend]
    outcomes = {}
    for backend in backends:
        emulated = backend == "fargate" and args.emulate
        with Emulator() if emulated else contextlib.nullcontext():
            outcomes[backend] = run(backend, args.simulations, args.workers, args.seed)

    first = outcomes[backends[0]]
    if len(outcomes) == 2:
        same = outcomes["local"] == outcomes["fargate"]
        print(f"  reproducible  local and Fargate results identical: {same}")
    else:
        # Same seed, one worker: identical numbers — the streams depend on the item, not the worker.
        same = cb.map(simulate_portfolio, range(100), workers=1, seed=args.seed, progress=False) == first[:100]
        print(f"  reproducible  first 100 simulations identical on 1 worker: {same}")
    if not same:
        raise SystemExit("results differ between runs with the same seed")


if __name__ == "__main__":
    main()
