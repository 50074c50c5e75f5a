"""The ecosystem examples, run as a user runs them: in a process of their own, at small sizes.

``examples/bootstrap.py`` locally, and on emulated Fargate (the session's emulator: the example's process
inherits its endpoints and runs with ``--no-emulate``); with the same seed, both print the same intervals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudburst.emulator import Emulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
INTERVAL = re.compile(
    r"^\s+(?P<name>.+?)\s+(?P<estimate>-?\d+\.\d+)\s+95% CI\s+(?P<low>-?\d+\.\d+)\s+–\s+(?P<high>-?\d+\.\d+)$"
)

pytestmark = pytest.mark.timeout(300)

pytest.importorskip("pandas")


def run_example(name: str, *args: str) -> list[str]:
    """The example's output lines; it must exit cleanly."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def bootstrap_intervals(lines: list[str]) -> dict[str, tuple[float, float, float]]:
    """Statistic -> (estimate, low, high), as the bootstrap example printed them."""
    found = {}
    for line in lines:
        match = INTERVAL.match(line)
        if match:
            found[match["name"]] = (float(match["estimate"]), float(match["low"]), float(match["high"]))
    return found


def check_bootstrap(lines: list[str]) -> dict[str, tuple[float, float, float]]:
    found = bootstrap_intervals(lines)
    assert set(found) == {"effect", "median drop", "corr(age, drop)"}, lines
    for name, (estimate, low, high) in found.items():
        assert low < estimate < high, f"{name}: the estimate {estimate} is outside its interval {low} – {high}"
    # The synthetic treatment lowers blood pressure by about 3.8 mmHg more than the control.
    assert 2.0 < found["effect"][0] < 5.5, found
    assert any("reproducible" in line and line.rstrip().endswith("True") for line in lines), lines
    return found


def test_bootstrap_locally_at_small_size() -> None:
    check_bootstrap(run_example("bootstrap.py", "--small", "--backend", "local", "--workers", "2"))


def test_bootstrap_on_emulated_fargate_gives_the_local_intervals(emulator: Emulator) -> None:
    small = ("--rows", "1000", "--replicates", "60", "--workers", "2")
    local = check_bootstrap(run_example("bootstrap.py", *small, "--backend", "local"))
    fargate = check_bootstrap(run_example("bootstrap.py", *small, "--backend", "fargate", "--no-emulate"))
    assert fargate == local
