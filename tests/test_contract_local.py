"""The backend contract suite (``cloudburst.testing``) against the local backend.

This is where the behaviour suite and the failure table run on the local backend; tests/test_behaviour.py
and tests/test_failures.py hold only the cases that need the backend's internals or options of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import cloudburst
from cloudburst.testing import BackendContract

from .conftest import leftover_check


class TestLocalContract(BackendContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> tuple[str, dict[str, Any]]:
        return "local", {}

    @classmethod
    def leftover_check(cls, executor: cloudburst.Executor) -> Callable[[], None]:
        return leftover_check(executor)
