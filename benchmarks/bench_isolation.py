"""Isolation: what a role per job costs, in AWS calls and in time, on emulated AWS.

    python benchmarks/bench_isolation.py            # 8 jobs
    python benchmarks/bench_isolation.py --quick    # 3 jobs

Measured in this run: jobs of one item on emulated Fargate, each opening and closing its own
IAM role; the IAM calls each job made, the time spent in them (timed around every IAM request by
botocore's events), and that time as a share of the job's whole run. The peers named below share
one task role among all jobs, so they make no per-job IAM call; the share is what isolation adds
over them. Real IAM is slower than the emulator (CreateRole is commonly 100-400 ms) and a new
role can take seconds before ECS may use it: RunTask is retried meanwhile, so on AWS the
added time is mostly that wait, overlapping the workers' own cold start (30-60 s on Fargate).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import cloudburst as cb
from cloudburst.backends.aws.clients import client
from cloudburst.emulator import Emulator

PEERS = "Lithops, Coiled, dask-cloudprovider (one shared role: 0 IAM calls per job)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    jobs = 3 if parser.parse_args().quick else 8
    calls: Counter[str] = Counter()
    spent = [0.0]
    started: dict[int, float] = {}

    def before(model: Any, **_: Any) -> None:
        started[id(model)] = time.perf_counter()

    def after(model: Any, **_: Any) -> None:
        calls[model.name] += 1
        spent[0] += time.perf_counter() - started.pop(id(model), time.perf_counter())

    with Emulator(verbose=False) as emulator:
        # cloudburst's clients are cached per service and region (clients.client): hook the IAM one
        events = client("iam", emulator.region).meta.events
        events.register("before-call.iam.*", before)
        events.register("after-call.iam.*", after)
        cb.map(abs, [-1], backend="fargate", workers=1)  # warm: image, task definition
        calls.clear()
        spent[0] = 0.0
        wall = time.perf_counter()
        for _ in range(jobs):
            assert cb.map(abs, [-1], backend="fargate", workers=1) == [1]
        wall = time.perf_counter() - wall
    per_job = {name: n / jobs for name, n in sorted(calls.items())}
    print(f"jobs: {jobs} of one item each on emulated Fargate, {wall / jobs:.2f} s per job")
    print(f"IAM calls per job: {sum(per_job.values()):g}  {per_job}")
    print(f"time in IAM per job: {1000 * spent[0] / jobs:.1f} ms = {spent[0] / wall:.1%} of the job's run")
    print(f"peers: {PEERS}; cloudburst adds {sum(per_job.values()):g} calls per job over them")


if __name__ == "__main__":
    main()
