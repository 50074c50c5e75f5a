"""Fargate prices and the billing rule.

Built-in prices (us-east-1, Linux) are refreshed from the Price List API when it answers,
and cached for a week in the user's cache directory. Fargate bills each task per second,
with a one-minute minimum, from the start of its image pull (``pullStartedAt``) until it
stops (``stoppedAt``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...config.userconfig import cache_dir
from .clients import client

__all__ = ["EMULATED_MARK", "SPOT_FACTOR", "Prices", "billed_seconds", "prices", "task_cost"]

#: a product attribute by which cloudburst's emulator marks the prices its Price List stub serves
EMULATED_MARK = "cloudburstEmulated"

#: Fargate Spot is "up to 70% off" and varies; estimates assume 65% off.
SPOT_FACTOR = 0.35
_CACHE_SECONDS = 7 * 86400
# Price List usage-type prefixes of a few regions; others fall back to the built-in prices.
_REGION_CODES = {
    "us-east-1": "USE1",
    "us-east-2": "USE2",
    "us-west-1": "USW1",
    "us-west-2": "USW2",
    "eu-west-1": "EU",
    "eu-west-2": "EUW2",
    "eu-central-1": "EUC1",
    "ap-southeast-1": "APS1",
    "ap-southeast-2": "APS2",
    "ap-northeast-1": "APN1",
    "ca-central-1": "CAN1",
}


@dataclass(frozen=True)
class Prices:
    """USD per hour: per vCPU, per GB of memory, per GB of ephemeral storage above 20 GB."""

    vcpu: float = 0.04048
    gb: float = 0.004445
    arm_vcpu: float = 0.03238
    arm_gb: float = 0.00356
    storage_gb: float = 0.000111
    source: str = "built-in (us-east-1)"

    def hourly(
        self, cpu_units: int, memory_mib: int, *, arch: str = "x86_64", spot: bool = False, storage_gb: int = 20
    ) -> float:
        """USD per hour for one task of this size."""
        arm = arch == "arm64"
        rate = (cpu_units / 1024) * (self.arm_vcpu if arm else self.vcpu)
        rate += (memory_mib / 1024) * (self.arm_gb if arm else self.gb)
        rate += max(0, storage_gb - 20) * self.storage_gb
        return rate * (SPOT_FACTOR if spot else 1.0)


def _cache_file(region: str) -> Path:
    return cache_dir() / f"fargate-prices-{region}.json"


def prices(region: str, *, refresh: bool = True) -> Prices:
    """Prices for ``region``: cached, else from the Price List API, else built in."""
    cache = _cache_file(region)
    try:
        data = json.loads(cache.read_text())
        if time.time() - float(data.pop("fetched")) < _CACHE_SECONDS:
            return Prices(**data)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if refresh:
        fetched = _from_price_list(region)
        if fetched is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({**asdict(fetched), "fetched": time.time()}))
            return fetched
    return Prices()


def _from_price_list(region: str) -> Prices | None:
    code = _REGION_CODES.get(region)
    if code is None:
        return None
    wanted = {
        "vcpu": f"{code}-Fargate-vCPU-Hours:perCPU",
        "gb": f"{code}-Fargate-GB-Hours",
        "arm_vcpu": f"{code}-Fargate-ARM-vCPU-Hours:perCPU",
        "arm_gb": f"{code}-Fargate-ARM-GB-Hours",
        "storage_gb": f"{code}-Fargate-EphemeralStorage-GB-Hours",
    }
    found: dict[str, float] = {}
    emulated = False
    try:
        pricing: Any = client("pricing", "us-east-1")  # the Price List API answers in us-east-1
        for field, usage in wanted.items():
            response = pricing.get_products(
                ServiceCode="AmazonECS", Filters=[{"Type": "TERM_MATCH", "Field": "usagetype", "Value": usage}]
            )
            for item in response.get("PriceList", []):
                product = json.loads(item) if isinstance(item, str) else item
                emulated = emulated or bool(product.get("product", {}).get("attributes", {}).get(EMULATED_MARK))
                for term in product.get("terms", {}).get("OnDemand", {}).values():
                    for dimension in term.get("priceDimensions", {}).values():
                        found[field] = float(dimension["pricePerUnit"]["USD"])
    except Exception:
        return None  # no access to the Price List API: the built-in prices stand
    if set(found) != set(wanted):
        return None
    if emulated:  # say so: these are the stub's fixed numbers, not what AWS charges today
        return Prices(**found, source=f"EMULATED: the emulator's Price List stub ({region})")
    return Prices(**found, source=f"Price List API ({region})")


def _when(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc).timestamp()


def billed_seconds(task: dict[str, Any], now: float | None = None) -> float:
    """Seconds Fargate bills for a task: image pull start to stop (or now), at least 60 once started."""
    start = _when(task.get("pullStartedAt")) or _when(task.get("startedAt"))
    if start is None:
        return 0.0  # never reached the image pull: not billed
    end = _when(task.get("stoppedAt")) or (time.time() if now is None else now)
    return max(60.0, end - start)


def task_cost(task: dict[str, Any], hourly: float, now: float | None = None) -> float:
    """USD billed for one described task at ``hourly`` USD per hour."""
    return hourly * billed_seconds(task, now) / 3600
