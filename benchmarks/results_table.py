"""The results table the benchmarks print: one row per target, cloudburst's figure against a named peer's."""

from __future__ import annotations

HEADER = ["target", "cloudburst", "peer", "peer figure", "ratio", "goal", "result"]


def table(rows: list[list[str]]) -> str:
    """``rows`` (one cell per header column) as aligned text, under the header."""
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
