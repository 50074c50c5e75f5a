"""``cloudburst.estimate``: time a small sample here, predict a cloud run's duration and cost.

The sample runs in this process, one item after another. The prediction assumes every worker
slot (``workers × cpu``) runs items back to back, and that each worker is billed by the backend's
price (``Backend.worker_price``: per hour, with its minimum billed time), a cold start
(``cold_start``) included. The backend is ``fargate`` unless another is named.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .backends import get_backend
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
    backend: str = "fargate",
) -> Estimate:
    """Predict the duration and cost of ``map(fn, items)`` on ``backend`` from ``sample`` items timed here."""
    values = list(items)
    if not values:
        raise ValueError("estimate() needs at least one item")
    memory_mib = None if memory is None else parse_memory(memory)
    price = get_backend(backend).worker_price(cpu, memory_mib, region=region, arch=arch, spot=spot)
    taken = values[: max(1, min(sample, len(values)))]
    started = time.perf_counter()
    for item in taken:
        fn(item)
    per_item = (time.perf_counter() - started) / len(taken)
    per_worker = max(1, math.floor(cpu))
    used = min(workers, math.ceil(len(values) / per_worker))
    slots = used * per_worker
    running = math.ceil(len(values) / slots) * per_item
    billed = max(price.minimum_seconds, cold_start + running)
    hourly = price.hourly
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
        prices_source=price.source,
    )
