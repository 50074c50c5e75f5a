"""Registers the ``"cloudburst"`` joblib backend without importing joblib from ``import cloudburst``.

:func:`enable` registers it at once when joblib is already imported, and otherwise when joblib's import
finishes (a one-shot import hook), so the two can be imported in either order.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["enable"]


def enable() -> None:
    """Make ``joblib.parallel_config(backend="cloudburst")`` work, now or once joblib is imported."""
    if "joblib" in sys.modules:
        _register()
    elif not any(isinstance(finder, _JoblibFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _JoblibFinder())


def _register() -> None:
    backend = sys.modules.get(f"{__package__}.joblib_backend")
    if backend is not None and not hasattr(backend, "register"):
        # joblib is being imported by joblib_backend itself (a worker unpickling a batch imports it first):
        # it registers itself once its own import is done.
        return
    from .joblib_backend import register

    register()


class _JoblibFinder(importlib.abc.MetaPathFinder):
    """Finds joblib as the other finders would, and registers the backend once it has loaded."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "joblib":
            return None
        sys.meta_path.remove(self)  # one shot: the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    """joblib's own loader, registering the backend after the module has run."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name: str) -> Any:  # is_package, get_resource_reader...: joblib's loader answers
        return getattr(self._loader, name)
