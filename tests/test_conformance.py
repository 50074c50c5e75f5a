"""CPython 3.13's own concurrent.futures tests pass against cloudburst.Executor, locally and on emulated Fargate.

The project's interpreter may not ship CPython's ``test`` package (pyenv builds
often leave it out), so the tests run in a subprocess, under a CPython 3.13 that
has it, in an environment made for them (``.venv/py313``, with cloudburst
installed editable). ``tests/cpython_futures.py`` combines CPython's test classes
with a cloudburst executor; any test that fails, and any thread or child process
a test leaves behind, fails this test.
"""

from __future__ import annotations

import builtins
import glob
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.backends.localqueue import MemoryQueue, QueueServer, connect

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


def test_local_queue_server_survives_bad_peers_and_ends_at_close(tmp_path: Path) -> None:
    """The local queue server drops a peer that fails its handshake and keeps serving; close ends its thread
    (CPython's checks above report the thread otherwise, as a dangling thread after every test)."""
    key = os.urandom(32)
    address = str(tmp_path / "queue.sock")
    before = set(threading.enumerate())
    server = QueueServer(address, key, [MemoryQueue(60)])
    mine = [t for t in threading.enumerate() if t not in before]
    with pytest.raises(AuthenticationError):
        Client(address, family="AF_UNIX", authkey=os.urandom(32))  # the wrong key
    with socket.socket(socket.AF_UNIX) as hang_up:  # hangs up during the handshake
        hang_up.connect(address)
    connected: list[Any] = []
    worker = threading.Thread(target=lambda: connected.extend(connect(address, key, "w1", 1)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert connected, "the queue server stopped accepting connections after a bad peer"
    connected[0].send_batch([b"hello"])
    assert [m.body for m in connected[0].receive(1, 5)] == [b"hello"]
    server.close()
    assert mine and not [t for t in mine if t.is_alive()], f"threads left running after close: {mine}"


# ---------------------------------------------------------------------------- exceptions keep their type


class Unpicklable:
    """An exception argument that cannot be pickled, with a str() and repr() the same in every process."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("Unpicklable objects cannot be pickled")

    def __str__(self) -> str:
        return "an unpicklable thing"

    def __repr__(self) -> str:
        return "Unpicklable()"


class CustomError(Exception):
    """Not a builtin: with an unpicklable argument it can only come back as a RemoteError."""


def _builtin_exception_types() -> list[type[BaseException]]:
    """Every builtin exception type but SystemExit (which comes back as TaskExitError, by design)."""
    found = {v for v in vars(builtins).values() if isinstance(v, type) and issubclass(v, BaseException)}
    return sorted(found - {SystemExit}, key=lambda cls: cls.__name__)


def _example(cls: type[BaseException], unpicklable: bool) -> BaseException:
    """An instance of ``cls`` made the same way in any process; with ``unpicklable``, holding an Unpicklable."""
    extra: tuple[Any, ...] = (Unpicklable(),) if unpicklable else ()
    if issubclass(cls, UnicodeDecodeError):
        return cls("utf-8", b"\xff", 0, 1, "invalid start byte")
    if issubclass(cls, UnicodeEncodeError):
        return cls("ascii", "\xff", 0, 1, "ordinal not in range(128)")
    if issubclass(cls, UnicodeTranslateError):
        return cls("\xff", 0, 1, "no translation")
    if issubclass(cls, SyntaxError):
        return cls("message from the task", (extra[0] if extra else "file.py", 1, 2, "text"))
    if cls.__name__ == "BaseExceptionGroup":
        return cls("a group", [KeyboardInterrupt(*extra)])
    if cls.__name__ == "ExceptionGroup":
        return cls("a group", [ValueError("inner", *extra)])
    return cls("message from the task", *extra)


def raise_example(name: str, unpicklable: bool) -> None:
    raise _example(getattr(builtins, name), unpicklable)


def recurse(depth: int) -> int:
    return recurse(depth + 1) + 1


def raise_deep(depth: int, exc: BaseException) -> None:
    if depth:
        raise_deep(depth - 1, exc)
    raise exc


def raise_custom(depth: int) -> None:
    raise_deep(depth, CustomError(Unpicklable()))


def _remote_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize("unpicklable", [False, True], ids=["plain", "unpicklable-argument"])
def test_every_builtin_exception_comes_back_as_itself(executor: cloudburst.Executor, unpicklable: bool) -> None:
    """Each builtin exception type raised by a task is raised in the client as that type, with its message and
    the remote traceback, also when one of its arguments cannot be pickled."""
    cases = [(cls, executor.submit(raise_example, cls.__name__, unpicklable)) for cls in _builtin_exception_types()]
    wrong = []
    for cls, future in cases:
        expected = _example(cls, unpicklable)
        got = future.exception(timeout=120)
        if type(got) is not type(expected) or str(got) != str(expected) or "raise_example" not in _remote_text(got):
            wrong.append(f"{cls.__name__}: got {type(got).__name__}: {str(got)[:200]!r}")
    assert not wrong, "builtin exceptions that did not come back as themselves:\n" + "\n".join(wrong)


@dataclass(frozen=True)
class ExceptionRow:
    """A task that raises; what the client must get: the type, a part of its message and of its traceback."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    raises: type[BaseException]
    message: str
    traceback: str


EXCEPTION_ROWS = [
    ExceptionRow("real deep recursion", recurse, (0,), RecursionError, "maximum recursion depth", "in recurse"),
    ExceptionRow("raised 900 frames deep", raise_deep, (900, KeyError("deep")), KeyError, "'deep'", "in raise_deep"),
    ExceptionRow(
        "builtin, unpicklable argument",
        raise_example,
        ("ValueError", True),
        ValueError,
        "('message from the task', Unpicklable())",
        "raise_example",
    ),
    ExceptionRow(  # not a builtin: its type cannot be rebuilt without its arguments
        "custom type, unpicklable argument",
        raise_custom,
        (3,),
        cloudburst.errors.RemoteError,
        "CustomError: an unpicklable thing (the exception could not be sent back as itself)",
        "in raise_deep",
    ),
]


@pytest.mark.parametrize("row", EXCEPTION_ROWS, ids=[r.name for r in EXCEPTION_ROWS])
def test_exception_table(executor: cloudburst.Executor, row: ExceptionRow) -> None:
    with pytest.raises(row.raises) as info:
        executor.submit(row.fn, *row.args).result(timeout=120)
    assert type(info.value) is row.raises
    assert row.message in str(info.value)
    assert row.traceback in _remote_text(info.value), _remote_text(info.value)[-3000:]
    assert executor.submit(abs, -3).result(timeout=60) == 3  # the executor carries on
