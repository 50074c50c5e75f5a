"""The image recipe installs: its requirements, installed with uv into a fresh virtual environment, run
the worker loop against the emulated queue. (No Docker engine runs here; this is the recipe minus the
container.)"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import cloudburst
from cloudburst.emulator import Emulator
from cloudburst.environment import build_context, snapshot

# What the worker loop itself imports; a user's environment adds its own packages to these.
RUNTIME = ["cloudpickle", "tblib", "tqdm", "zstandard", "boto3", "platformdirs", "click", "tomli-w"]


def whoami(x: int) -> tuple[int, str]:
    return x * 2, sys.prefix


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recipe")
    requirements = root / "requirements.in"
    requirements.write_text("\n".join(f"{name}=={metadata.version(name)}" for name in RUNTIME) + "\n")
    context = build_context(snapshot(requirements), root / "context")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "uv"], check=True, timeout=600)
    subprocess.run(  # the recipe's own install line: uv pip install -r requirements.txt
        [str(venv / "bin" / "uv"), "pip", "install", "--python", str(python), "-r", str(context / "requirements.txt")],
        check=True,
        timeout=600,
    )
    return python, context


def test_the_recipe_installs_and_runs_the_worker_loop(emulator: Emulator, image_env: tuple[Path, Path]) -> None:
    python, context = image_env
    assert emulator.agent is not None
    emulator.agent.python = str(python)
    emulator.agent.extra_env = {"PYTHONPATH": str(context)}  # the recipe's ENV PYTHONPATH=/cloudburst/lib
    try:
        with cloudburst.Executor(1, backend="fargate") as ex:
            results = list(ex.map(whoami, range(3)))
    finally:
        emulator.agent.python = sys.executable
        emulator.agent.extra_env = {}
    assert [r[0] for r in results] == [0, 2, 4]
    assert {r[1] for r in results} == {str(python.parent.parent)}  # ran in the fresh environment
