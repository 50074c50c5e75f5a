"""The grid-search and per-sample pipeline examples, run as a user runs them: in a process of their own, small.

``examples/grid_search.py`` locally and on emulated Fargate (the session's emulator: the example's process
inherits its endpoints and runs with ``--no-emulate``): the search must choose the ``n_jobs=1`` search's
parameters with its scores. ``examples/samples_pipeline.py`` runs every stage the first time and none the second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudburst.emulator import Emulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.timeout(300)


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The example's output lines; it must exit cleanly."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def check_grid(lines: list[str], backend: str) -> None:
    """The search on ``backend`` chose the ``n_jobs=1`` search's parameters, with the same scores."""
    best = {line.split()[0]: line.split("best_params_")[1] for line in lines if "best_params_" in line}
    assert set(best) == {"n_jobs=1", backend}, lines
    assert best[backend] == best["n_jobs=1"], lines
    assert f"  {backend:<10} 48 fits in" in "\n".join(lines), lines
    assert any(line.split()[0] == backend and line.rstrip().endswith("n_jobs=1: True") for line in lines), lines


def test_grid_search_locally_at_small_size() -> None:
    pytest.importorskip("sklearn")
    check_grid(run_example("grid_search.py", "--small", "--backend", "local", "--workers", "2"), "local")


def test_grid_search_on_emulated_fargate_agrees_with_n_jobs_1(emulator: Emulator) -> None:
    pytest.importorskip("sklearn")
    args = ("--small", "--backend", "fargate", "--no-emulate", "--workers", "2")
    check_grid(run_example("grid_search.py", *args), "fargate")
