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
from typing import Any

import pytest

import cloudburst
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


SIZES = ("--samples", "2000", "--trees", "10")  # X and y 0.34 MB: large beside a fit's own parameters


def check_grid(lines: list[str], backend: str) -> None:
    """The search on ``backend`` chose the ``n_jobs=1`` search's parameters, with the same scores."""
    best = {line.split()[0]: line.split("best_params_")[1] for line in lines if "best_params_" in line}
    assert set(best) == {"n_jobs=1", backend}, lines
    assert best[backend] == best["n_jobs=1"], lines
    assert f"  {backend:<10} 48 fits in" in "\n".join(lines), lines
    assert any(line.split()[0] == backend and line.rstrip().endswith("n_jobs=1: True") for line in lines), lines
    upload = next(line for line in lines if line.split()[0] == backend and " uploaded " in line)
    per_fit = float(upload.split("; ")[1].split(" kB per fit")[0])
    # X and y (0.34 MB) moved once: sent with each batch instead, they would add hundreds of kB a fit.
    assert per_fit < 64, f"more than X and y once, and a fit's own parameters: {upload}"


def test_grid_search_locally_at_small_size() -> None:
    pytest.importorskip("sklearn")
    check_grid(run_example("grid_search.py", *SIZES, "--backend", "local", "--workers", "2"), "local")


def test_grid_search_on_emulated_fargate_agrees_with_n_jobs_1(emulator: Emulator) -> None:
    pytest.importorskip("sklearn")
    args = (*SIZES, "--backend", "fargate", "--no-emulate", "--workers", "2")
    check_grid(run_example("grid_search.py", *args), "fargate")


SAMPLE_STAGES = {"sequence", "qc", "align", "call_variants", "summarise"}


def last_run(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The record of the pipeline example's last run, as its process saved it in ``cache_dir``."""
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(cache_dir))
    report = cloudburst.last_run("samples-pipeline")
    assert report is not None, f"the example saved no run record in {cache_dir}"
    return report


def statuses(report: Any) -> dict[str, str]:
    """Stage name (without its module) -> its status in that run."""
    return {record.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]: record.status for record in report.stages}


def run_samples_twice(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> list[str]:
    """Runs the pipeline example twice: the first run runs every stage, the second none, with the same output."""
    env = {"CLOUDBURST_CACHE_DIR": str(cache_dir)}
    first = run_example("samples_pipeline.py", *args, env=env)
    assert statuses(last_run(cache_dir, monkeypatch)) == dict.fromkeys(SAMPLE_STAGES, "ran")
    second = run_example("samples_pipeline.py", *args, env=env)
    cached = last_run(cache_dir, monkeypatch)
    assert statuses(cached) == dict.fromkeys(SAMPLE_STAGES, "cached")
    assert cached.job_ids == [], "a fully cached run opened an executor"
    results = [line for line in first if line.startswith("  S") or line.lstrip().startswith(("shared", "recall"))]
    assert len(results) == 4 + 2, first
    assert results == [line for line in second if line in results], "the cached results differ from the computed"
    # Every planted variant is found at 20x coverage with 1 % errors: the stages did their work.
    assert "  recall   1.000 of the planted variants found, 0 false calls" in results, first
    return results


def test_samples_pipeline_locally_runs_every_stage_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_samples_twice(tmp_path, monkeypatch, "--small")


def test_samples_pipeline_on_emulated_fargate_matches_local(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = run_samples_twice(tmp_path / "local", monkeypatch, "--small")
    fargate = run_samples_twice(tmp_path / "fargate", monkeypatch, "--small", "--backend", "fargate", "--no-emulate")
    assert fargate == local, "with the same seed, the reads and so the calls are the same on every backend"
