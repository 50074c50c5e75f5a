"""A scikit-learn grid search with ``n_jobs=-1``, run by joblib, by cloudburst's local workers and on Fargate.

    python examples/grid_search.py                        # n_jobs=1, local workers, then Fargate (emulated AWS)
    python examples/grid_search.py --small                # a quick run: 48 fits on 300 samples
    python examples/grid_search.py --backend local --workers 2
    python examples/grid_search.py --backend fargate --no-emulate   # your AWS account (after `cloudburst setup`)

The search is the code a scikit-learn user already has: ``GridSearchCV(..., n_jobs=-1)``. Only the
``joblib.parallel_config(backend="cloudburst", ...)`` around ``fit`` changes where the fits run: here with
``executor=``, one :class:`cloudburst.Executor` whose workers serve the whole search and which counts the bytes
it uploads (``cloudburst_backend="fargate"`` instead starts one per ``Parallel`` call). ``X`` and ``y``, shared
by every fit, move to the workers once per search, not once per fit: the example prints what was uploaded. The search is
deterministic (fixed ``random_state``), so ``best_params_`` and every ``cv_results_`` score must be the same on
each backend as with ``n_jobs=1``; the example exits non-zero if they are not.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV

import cloudburst as cb  # also registers joblib's "cloudburst" backend
from cloudburst.emulator import Emulator

SCORES = ("mean_test_score", "std_test_score", "rank_test_score")


def make_search(trees: int) -> GridSearchCV:
    """A 4 x 3 x 2 grid of random forests, 2-fold: 48 fits."""
    grid = {
        "max_depth": [2, 4, 8, None],
        "min_samples_leaf": [1, 3, 9],
        "max_features": ["sqrt", None],
    }
    forest = RandomForestClassifier(n_estimators=trees, random_state=0)
    return GridSearchCV(forest, grid, cv=2, n_jobs=-1)


def fit(label: str, X: np.ndarray, y: np.ndarray, trees: int, parallel: dict[str, Any]) -> GridSearchCV:
    """Fits the search under ``joblib.parallel_config(**parallel)`` and prints what it found."""
    search = make_search(trees)
    if not parallel:
        search.set_params(n_jobs=1)
    started = time.perf_counter()
    with joblib.parallel_config(**parallel) if parallel else contextlib.nullcontext():
        search.fit(X, y)
    elapsed = time.perf_counter() - started
    fits = len(search.cv_results_["params"]) * search.n_splits_
    print(f"  {label:<10} best_params_ {search.best_params_}  score {search.best_score_:.4f}")
    print(f"  {label:<10} {fits} fits in {elapsed:.2f} s")
    return search


def report_upload(label: str, uploaded: int, data: int, search: GridSearchCV) -> None:
    """What the search sent to the workers, against the size of ``X`` and ``y``."""
    fits = len(search.cv_results_["params"]) * search.n_splits_
    print(
        f"  {label:<10} uploaded {uploaded / 1e6:.2f} MB in all for {data / 1e6:.2f} MB of X and y "
        f"({uploaded / data:.2f}x; {max(0, uploaded - data) / fits / 1e3:.1f} kB per fit besides them)"
    )


def same_scores(a: GridSearchCV, b: GridSearchCV) -> bool:
    """Whether two searches chose the same parameters with the same cross-validation scores."""
    return a.best_params_ == b.best_params_ and all(
        np.allclose(a.cv_results_[key], b.cv_results_[key], rtol=0, atol=1e-12) for key in SCORES
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5_000)
    parser.add_argument("--trees", type=int, default=100, help="trees per forest")
    parser.add_argument("--small", action="store_true", help="a quick run: 300 samples, 10 trees")
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU (cloud: the configured)")
    parser.add_argument("--backend", choices=["local", "fargate", "both"], default="both")
    parser.add_argument(
        "--emulate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the fargate backend against emulated AWS on this machine (default); --no-emulate uses your account",
    )
    args = parser.parse_args()
    if args.small:
        args.samples, args.trees = 300, 10
    return args


def main() -> None:
    args = parse_args()
    X, y = make_classification(n_samples=args.samples, n_features=20, n_informative=6, random_state=1)
    print(f"Grid search: {args.samples:,} samples, {args.trees} trees per forest")
    reference = fit("n_jobs=1", X, y, args.trees, {})
    agree = True
    for backend in ["local", "fargate"] if args.backend == "both" else [args.backend]:
        with (
            Emulator() if backend == "fargate" and args.emulate else contextlib.nullcontext(),
            cb.Executor(args.workers, backend=backend) as executor,  # one set of workers for the whole search
        ):
            search = fit(backend, X, y, args.trees, {"backend": "cloudburst", "executor": executor})
            report_upload(backend, executor.bytes_uploaded, X.nbytes + y.nbytes, search)
        same = same_scores(search, reference)
        print(f"  {backend:<10} cv_results_ scores agree with n_jobs=1: {same}")
        agree = agree and same
    if not agree:
        raise SystemExit("the searches differ: the same grid gave different scores")


if __name__ == "__main__":
    main()
