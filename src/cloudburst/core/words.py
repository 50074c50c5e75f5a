"""Numbers with their nouns in what users read: "1 worker", "2 workers", "0.5 vCPUs"."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: float, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, plural unless the count is exactly one (``many`` for irregular nouns).

    Whole numbers get thousands separators (``10,000 items``); others are shown as ``:g`` does.
    """
    shown = f"{count:,}" if isinstance(count, int) else f"{count:,g}"
    return f"{shown} {noun if count == 1 else (many or noun + 's')}"
