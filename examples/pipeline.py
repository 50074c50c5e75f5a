"""A pipeline of stages: two data stages in parallel, then a model stage on a bigger worker.

    python examples/pipeline.py                      # local workers; run it again and every stage is cached
    python examples/pipeline.py --n 5000 --explain   # a changed global: says which stages ran again, and why
    python -m cloudburst.emulator -- python examples/pipeline.py --backend fargate   # emulated AWS
    python examples/pipeline.py --backend fargate    # your AWS account (after `cloudburst setup`)

``get_data_x`` and ``get_data_y`` each run on a worker of 1 vCPU and 2 GB, at the same time;
``build_model`` starts when both are done, on a worker of 2 vCPUs and 4 GB, and reads their
results from the store they were written to. The result of every stage is kept in the cache
(locally: your cache directory; on AWS: ``cache/`` in the set-up bucket), so a second run with
the same code, globals and seed runs nothing and gives the same model. With ``seed=1`` each
stage draws its own reproducible random stream.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

import cloudburst as cb

PIPELINE = "super-complex-pipeline"

num_observations = 1000  # a global: it reaches the stages that read it, and is part of their cache keys


@cb.stage(cpu=1, memory="2GB")
def get_data_x() -> pd.DataFrame:
    return pd.DataFrame({"x": cb.rng().uniform(size=num_observations)})


@cb.stage(cpu=1, memory="2GB")
def get_data_y() -> pd.DataFrame:
    return pd.DataFrame({"y": cb.rng().normal(size=num_observations)})


@dataclass(frozen=True)
class LinearModel:
    """``y = intercept + slope * x``, fitted by least squares."""

    intercept: float
    slope: float
    r_squared: float
    n: int

    def __str__(self) -> str:
        return f"y = {self.intercept:.4f} + {self.slope:.4f} · x   (R² {self.r_squared:.4f}, n = {self.n:,})"


def fit_linear(data: pd.DataFrame) -> LinearModel:
    """Ordinary least squares of ``y`` on ``x`` (R's ``lm(y ~ x, data)``)."""
    x, y = data["x"].to_numpy(), data["y"].to_numpy()
    design = np.column_stack([np.ones_like(x), x])
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ np.array([intercept, slope])
    r_squared = 1.0 - float(residuals @ residuals) / float(((y - y.mean()) ** 2).sum())
    return LinearModel(float(intercept), float(slope), r_squared, len(y))


@cb.stage(cpu=2, memory="4GB")
def build_model(data_x: pd.DataFrame, data_y: pd.DataFrame) -> LinearModel:
    return fit_linear(pd.concat([data_x, data_y], axis=1))


def main() -> None:
    global num_observations
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "fargate"], default="local")
    parser.add_argument("--n", type=int, default=num_observations, help="observations per data stage")
    parser.add_argument("--explain", action="store_true", help="say why each stage ran or was cached")
    args = parser.parse_args()
    num_observations = args.n

    print(f"Pipeline {PIPELINE!r} on backend={args.backend!r} (seed=1, {num_observations:,} observations)")
    started = time.perf_counter()
    # Calling the stages runs nothing: it wires the DAG. compute runs what the model needs.
    model = cb.compute(
        build_model(get_data_x(), get_data_y()), name=PIPELINE, backend=args.backend, seed=1, explain=args.explain
    )
    elapsed = time.perf_counter() - started
    report = cb.last_run()
    assert report is not None  # compute has just run in this process
    print(f"  model   {model}")
    print(f"  stages  {report.summary()}")
    print(f"  time    {elapsed:.2f} s")


if __name__ == "__main__":
    main()
