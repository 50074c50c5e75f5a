"""CPython's generic ``concurrent.futures`` tests, run against ``cloudburst.Executor``.

Run by ``tests/test_conformance.py`` under a Python that ships ``test.test_concurrent_futures``
(CPython 3.13)::

    python tests/cpython_futures.py local|fargate [unittest options]

The test classes are CPython's own, imported from its ``test`` package and combined
with a mixin that makes a cloudburst executor, the way CPython combines them with
its thread and process pool mixins. Only the executor, ``wait`` and ``as_completed``
tests that hold for any executor are used; those about threads or processes are not.
CPython's ``BaseTestCase`` and ``setup_module`` report threads and child processes a
test leaves behind; any such report fails the run (exit status 2).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import unittest
from collections.abc import Iterator
from typing import Any

from test import support
from test.test_concurrent_futures.executor import ExecutorTest
from test.test_concurrent_futures.test_as_completed import AsCompletedTests
from test.test_concurrent_futures.test_wait import WaitTests
from test.test_concurrent_futures.util import BaseTestCase, ExecutorMixin, setup_module

import cloudburst

BACKEND = sys.argv[1] if len(sys.argv) > 1 else "local"


class CloudburstMixin(ExecutorMixin):
    """CPython's ExecutorMixin, making ``cloudburst.Executor(max_workers=5, backend=BACKEND)``."""

    executor_type: Any = staticmethod(functools.partial(cloudburst.Executor, backend=BACKEND))


class CloudburstExecutorTest(CloudburstMixin, ExecutorTest, BaseTestCase):  # type: ignore[misc]
    """Executor.submit / map / references / max_workers."""


class CloudburstWaitTest(CloudburstMixin, WaitTests, BaseTestCase):  # type: ignore[misc]
    """concurrent.futures.wait over cloudburst futures."""


class CloudburstAsCompletedTest(CloudburstMixin, AsCompletedTests, BaseTestCase):  # type: ignore[misc]
    """concurrent.futures.as_completed over cloudburst futures."""


def setUpModule() -> None:
    setup_module()  # reports threads the whole module leaves running


@contextlib.contextmanager
def emulated_aws() -> Iterator[None]:
    """Emulated AWS in a process of its own, as AWS is: its server threads and its "Fargate" worker
    processes are then not this process's, and CPython's checks see only what the executor leaves."""
    emulator = subprocess.Popen(
        [sys.executable, __file__, "--serve-emulator"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert emulator.stdin is not None and emulator.stdout is not None
    try:
        line = emulator.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process exited before it was ready (see its output above)")
        saved = dict(os.environ)
        for name, value in json.loads(line).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
    finally:
        emulator.stdin.close()  # it stops when its input ends
        emulator.wait(timeout=60)


def serve_emulator() -> None:
    """Run the emulator until standard input ends; first print the environment that reaches it, as JSON."""
    from cloudburst.emulator import Emulator

    before = dict(os.environ)
    with Emulator(verbose=False):
        changes: dict[str, str | None] = {k: v for k, v in os.environ.items() if before.get(k) != v}
        changes.update({k: None for k in before if k not in os.environ})
        print(json.dumps(changes), flush=True)
        sys.stdin.read()


def main() -> int:
    if BACKEND == "--serve-emulator":
        serve_emulator()
        return 0
    with emulated_aws() if BACKEND == "fargate" else contextlib.nullcontext():
        program = unittest.main(module=__name__, argv=[sys.argv[0], *sys.argv[2:]], exit=False)
    if not program.result.wasSuccessful():
        return 1
    if support.environment_altered:
        print("FAILED: a test left threads or child processes behind (see the warnings above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
