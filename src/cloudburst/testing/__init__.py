"""The backend contract suite: tests a backend's test module runs by subclassing, as fsspec's abstract tests.

::

    import pytest
    from cloudburst.testing import BackendContract

    class TestMine(BackendContract):
        @pytest.fixture(scope="class")
        def backend(self):
            return "mine", {"workers": 2}   # a registered backend name, and Executor options

The class collects, one by one, the Store, Queue and Launcher semantics that
``cloudburst.backends.base`` documents, then the behaviour suite and the failure
table through ``cloudburst.Executor``. The fixture is class-scoped so that the
tests share one job and one executor. Class attributes say what a backend cannot
do (``isolated_workers``, ``relays_output``, ``fresh_executors``); see
``BackendContract``. This package imports pytest: nothing else in cloudburst
imports it, and the functions the tests send to workers live in ``tasks``, which
does not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BackendContract"]


def __getattr__(name: str) -> Any:
    # pytest is imported only when the suite is asked for: workers unpickle functions from ``tasks``.
    if name == "BackendContract":
        from .contract import BackendContract

        return BackendContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
