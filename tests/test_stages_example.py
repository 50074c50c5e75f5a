"""examples/pipeline.py, the seed's pipeline, as a user runs it: in a process of its own, twice.

The first run runs every stage; the second, with the same code, globals and seed, runs none: every stage is a
cache hit and the model is the same. Locally (the cache in the user's cache directory) and on emulated Fargate
(the cache under ``cache/`` in the emulated bucket). What ran is read from the run record the example's process
saved (``cloudburst.stages.report.load_run``), not from its printed summary.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.emulator import Emulator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline.py"
PIPELINE = "super-complex-pipeline"
STAGES = {"get_data_x", "get_data_y", "build_model"}

pytestmark = [
    pytest.mark.skipif(
        not hasattr(cloudburst, "compute"),
        reason="cloudburst.compute (issue 12's stages) is not on this branch yet",
    ),
    pytest.mark.timeout(300),
]


def run_example(cache_dir: Path, *args: str) -> list[str]:
    """The example's output lines; it must exit cleanly. Its cache and run records go to ``cache_dir``."""
    env = {**os.environ, "CLOUDBURST_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, f"the example failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def last_run(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The record of the example's last run, as its process saved it in ``cache_dir``."""
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(cache_dir))
    report = importlib.import_module("cloudburst.stages.report").load_run(PIPELINE)
    assert report is not None, f"the example saved no run record named {PIPELINE!r} in {cache_dir}"
    return report


def records(report: Any) -> dict[str, Any]:
    """Stage name (without its module) -> its record."""
    return {record.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]: record for record in report.stages}


def statuses(report: Any) -> dict[str, str]:
    return {name: record.status for name, record in records(report).items()}


def model_line(lines: list[str]) -> str:
    found = [line for line in lines if line.strip().startswith("model")]
    assert len(found) == 1, lines
    return found[0]


def run_twice(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """Runs the example twice: the first run runs every stage, the second none, with the same model.
    Returns the first run's record."""
    first = run_example(cache_dir, *args)
    report = last_run(cache_dir, monkeypatch)
    assert statuses(report) == dict.fromkeys(STAGES, "ran")
    second = run_example(cache_dir, *args)
    cached = last_run(cache_dir, monkeypatch)
    assert statuses(cached) == dict.fromkeys(STAGES, "cached")
    assert cached.job_ids == [], "a fully cached run opened an executor"
    assert model_line(second) == model_line(first), "the cached model differs from the one computed"
    return report


def test_local_second_run_is_all_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_twice(tmp_path / "cache", monkeypatch, "--backend", "local")


def test_a_changed_global_reruns_the_stages_that_read_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    run_example(cache_dir, "--n", "200")
    lines = run_example(cache_dir, "--n", "300", "--explain")
    assert statuses(last_run(cache_dir, monkeypatch)) == dict.fromkeys(STAGES, "ran")
    assert "n = 300" in model_line(lines)
    assert any("num_observations" in line for line in lines), "--explain does not name the changed global"


def test_emulated_fargate_second_run_is_all_cached(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = run_twice(tmp_path / "cache", monkeypatch, "--backend", "fargate", "--n", "500")
    shapes = {name: record.shape for name, record in records(report).items()}
    assert shapes["get_data_x"] == shapes["get_data_y"] != shapes["build_model"]
    assert shapes["build_model"].get("cpu") == 2, shapes
    assert len(report.job_ids) == 2, "one executor per shape: 1 vCPU 2 GB and 2 vCPU 4 GB"
