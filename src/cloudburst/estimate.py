"""``cloudburst.estimate``: time a small sample here, predict a Fargate run's duration and cost.

The sample runs in this process, one item after another. The prediction assumes every worker
slot (``workers × cpu``) runs items back to back, and that each worker is billed Fargate's way:
per second from its image pull, with a one-minute minimum, a cold start (``cold_start``) included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .config.options import parse_memory
from .core.words import plural

__all__ = ["Estimate", "estimate"]


@dataclass(frozen=True)
class Estimate:
    items: int
    sampled: int
    seconds_per_item: float
    workers: int
    slots: int
    cold_start: float
    hourly_per_worker: float
    seconds: float  # wall time, cold start included
    billed_seconds_per_worker: float
    cost: float  # USD
    prices_source: str = ""  # where the prices came from: the Price List API, the built-in table, the emulator

    def __str__(self) -> str:
        work = self.seconds_per_item * self.items
        return (
            f"{plural(self.items, 'item')} × {self.seconds_per_item:.3g} s (timed on {self.sampled} here) = "
            f"{work:,.0f} s of work; on {plural(self.workers, 'worker')} ({self.slots} at a time): about "
            f"{self.seconds:,.0f} s including a {self.cold_start:g} s start, ≈ ${self.cost:.2f} "
            f"(${self.hourly_per_worker:.4f} per worker-hour; prices: {self.prices_source or 'unknown'})"
        )


def estimate(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    workers: int = 10,
    cpu: float = 1,
    memory: str | float | None = None,
    spot: bool = False,
    arch: str = "x86_64",
    sample: int = 10,
    cold_start: float = 60.0,
    region: str | None = None,
) -> Estimate:
    """Predict the duration and cost of ``map(fn, items)`` on Fargate from ``sample`` items timed here."""
    from .backends.aws.pricing import prices
    from .backends.aws.sizes import task_size

    values = list(items)
    if not values:
        raise ValueError("estimate() needs at least one item")
    cpu_units, memory_mib = task_size(cpu, None if memory is None else parse_memory(memory))
    taken = values[: max(1, min(sample, len(values)))]
    started = time.perf_counter()
    for item in taken:
        fn(item)
    per_item = (time.perf_counter() - started) / len(taken)
    per_worker = max(1, math.floor(cpu))
    used = min(workers, math.ceil(len(values) / per_worker))
    slots = used * per_worker
    running = math.ceil(len(values) / slots) * per_item
    billed = max(60.0, cold_start + running)
    table = prices(region or "us-east-1")
    hourly = table.hourly(cpu_units, memory_mib, arch=arch, spot=spot)
    return Estimate(
        items=len(values),
        sampled=len(taken),
        seconds_per_item=per_item,
        workers=used,
        slots=slots,
        cold_start=cold_start,
        hourly_per_worker=hourly,
        seconds=cold_start + running,
        billed_seconds_per_worker=billed,
        cost=used * billed * hourly / 3600,
        prices_source=table.source,
    )
