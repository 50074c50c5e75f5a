"""The backend contract suite against emulated Fargate.

The emulator is slow to start workers, so the executor cases run on the one shared executor
(``fresh_executors = False``: the cases that need an executor of their own are skipped here; they run
against Fargate in tests/test_behaviour.py and tests/test_failures.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from cloudburst.emulator import Emulator
from cloudburst.testing import BackendContract


class TestFargateContract(BackendContract):
    fresh_executors = False

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, emulator: Emulator) -> tuple[str, dict[str, Any]]:
        return "fargate", {}
