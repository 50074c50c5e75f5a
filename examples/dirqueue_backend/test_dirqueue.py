"""The whole backend contract suite against the dirqueue example backend."""

from __future__ import annotations

from typing import Any

import pytest

import dirqueue_backend  # noqa: F401  (registers backend="dirqueue")
from cloudburst.testing import BackendContract


class TestDirQueueContract(BackendContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> tuple[str, dict[str, Any]]:
        return "dirqueue", {}
