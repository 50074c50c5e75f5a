"""Fargate's valid task sizes: checked before anything launches, since the API (and moto) would not say why."""

from __future__ import annotations

from ...errors import ConfigurationError

__all__ = ["VALID_SIZES", "task_size"]

# CPU units -> valid memory values in MiB (AWS documentation, "Task size").
VALID_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}


def _gb(mib: int) -> str:
    return f"{mib / 1024:g}GB"


def task_size(cpu: float, memory_mib: int | None) -> tuple[int, int]:
    """``(cpu units, memory MiB)`` for a worker of ``cpu`` vCPUs; memory defaults to 2 GB per vCPU."""
    units = round(cpu * 1024)
    if units not in VALID_SIZES:
        valid = ", ".join(f"{u / 1024:g}" for u in VALID_SIZES)
        raise ConfigurationError(f"cpu={cpu:g} is not a Fargate task size; use one of cpu={valid} (vCPUs)")
    allowed = VALID_SIZES[units]
    if memory_mib is None:
        memory_mib = min(allowed, key=lambda m: abs(m - 2048 * units // 1024))
    if memory_mib not in allowed:
        if len(allowed) > 8:
            listed = f"{_gb(allowed[0])} to {_gb(allowed[-1])} in steps of {_gb(allowed[1] - allowed[0])}"
        else:
            listed = ", ".join(_gb(m) for m in allowed)
        raise ConfigurationError(
            f"memory={_gb(memory_mib)} is not valid with cpu={cpu:g} on Fargate; valid memory for cpu={cpu:g}: {listed}"
        )
    return units, memory_mib
