"""CPython 3.13's own concurrent.futures tests pass against cloudburst.Executor, locally and on emulated Fargate.

The project's interpreter may not ship CPython's ``test`` package (pyenv builds
often leave it out), so the tests run in a subprocess, under a CPython 3.13 that
has it, in an environment made for them (``.venv/py313``, with cloudburst
installed editable). ``tests/cpython_futures.py`` combines CPython's test classes
with a cloudburst executor; any test that fails, and any thread or child process
a test leaves behind, fails this test.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "cpython_futures.py"
ENV_DIR = ROOT / ".venv" / "py313"
_HAS_TESTS = "import test.test_concurrent_futures.util, test.test_concurrent_futures.executor"


def _has_cpython_tests(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", _HAS_TESTS], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_python313() -> str | None:
    """A CPython 3.13 with its ``test`` package: pyenv's, else ``python3.13`` on PATH."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.13*", "bin", "python3.13")), reverse=True)
    on_path = shutil.which("python3.13")
    if on_path:
        candidates.append(on_path)
    return next((c for c in candidates if _has_cpython_tests(c)), None)


def _environment(python: str) -> Path:
    """``.venv/py313``: that interpreter with cloudburst (editable) and the emulator's dependencies."""
    stamp = hashlib.sha256(python.encode() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    marker = ENV_DIR / "cloudburst-stamp"
    env_python = ENV_DIR / "bin" / "python"
    if env_python.exists() and marker.exists() and marker.read_text() == stamp:
        return env_python
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    uv = [sys.executable, "-m", "uv"]
    if subprocess.run([*uv, "--version"], capture_output=True).returncode == 0:
        steps = [
            [*uv, "venv", "--quiet", "--python", python, str(ENV_DIR)],
            [*uv, "pip", "install", "--quiet", "--python", str(env_python), "-e", f"{ROOT}[emulator]"],
        ]
    else:
        steps = [
            [python, "-m", "venv", str(ENV_DIR)],
            [str(env_python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[emulator]"],
        ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"could not make the Python 3.13 test environment: {' '.join(step)}\n{done.stderr[-3000:]}")
    marker.write_text(stamp)
    return env_python


@pytest.fixture(scope="module")
def python313() -> Path:
    python = find_python313()
    if python is None:
        message = (
            "CPython 3.13 with its test package (test.test_concurrent_futures) was not found: looked in "
            "$PYENV_ROOT/versions/3.13*/bin and for python3.13 on PATH. Install it, e.g. `pyenv install 3.13`."
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the conformance run is required, never skipped
        pytest.skip(message)
    return _environment(python)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["local", "fargate"])
def test_cpython_concurrent_futures_tests(python313: Path, backend: str) -> None:
    """CPython's executor, wait and as_completed tests, with none of its warnings about threads or children."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(
        [str(python313), str(RUNNER), backend], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )
    output = done.stdout + done.stderr
    ran = re.search(r"^Ran (\d+) tests?", output, re.MULTILINE)
    assert ran is not None and int(ran.group(1)) >= 20, f"CPython's tests did not run:\n{output[-5000:]}"
    assert done.returncode == 0, f"CPython's concurrent.futures tests failed on {backend}:\n{output[-8000:]}"
    assert "Warning --" not in output, f"CPython's checks reported something left behind:\n{output[-8000:]}"
