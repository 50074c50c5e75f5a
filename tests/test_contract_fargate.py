"""The backend contract suite against emulated Fargate.

This is where the behaviour suite and the failure table run on Fargate; tests/test_behaviour.py and
tests/test_failures.py hold only the cases that need the backend's internals or options of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import cloudburst
from cloudburst.emulator import Emulator
from cloudburst.testing import BackendContract

from .conftest import leftover_check


class TestFargateContract(BackendContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, emulator: Emulator) -> tuple[str, dict[str, Any]]:
        return "fargate", {}

    @classmethod
    def leftover_check(cls, executor: cloudburst.Executor) -> Callable[[], None]:
        return leftover_check(executor)
