"""The backend contract suite against the inline backend (calls run on threads of the client's process)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudburst.testing import BackendContract


class TestInlineContract(BackendContract):
    isolated_workers = False  # one process: nothing can die alone, and objects load as in the client
    relays_output = False  # output goes straight to the terminal (so that breakpoint() works)

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> tuple[str, dict[str, Any]]:
        return "inline", {}
