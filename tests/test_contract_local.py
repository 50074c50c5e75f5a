"""The backend contract suite (``cloudburst.testing``) against the local backend."""

from __future__ import annotations

from typing import Any

import pytest

from cloudburst.testing import BackendContract


class TestLocalContract(BackendContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> tuple[str, dict[str, Any]]:
        return "local", {}
