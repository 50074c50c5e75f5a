"""Backends: a named bundle of Store + Queue + Launcher, chosen from a registry.

The contracts are tiny on purpose (see ``base``); everything else lives in the
core. Backends are found by name, imported lazily, and a backend whose
dependencies are missing says what to install.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from ..errors import ConfigurationError
from .base import Backend, JobResources, Launcher, Message, Queue, Store, WorkerExit

__all__ = [
    "Backend",
    "JobResources",
    "Launcher",
    "Message",
    "Queue",
    "Store",
    "WorkerExit",
    "available",
    "get_backend",
    "register",
]

# name -> ("module:attribute", install hint)
_REGISTRY: dict[str, tuple[str, str]] = {
    "local": ("cloudburst.backends.local:LocalBackend", ""),
    "inline": ("cloudburst.backends.inline:InlineBackend", ""),
    "fargate": (
        "cloudburst.backends.aws.fargate:FargateBackend",
        "install the AWS extra: pip install 'cloudburst[aws]'",
    ),
}
_LOADED: dict[str, type[Backend]] = {}


def register(name: str, target: str, install_hint: str = "") -> None:
    """Register a backend class by import path, e.g. ``register("mine", "pkg.mod:MyBackend")``."""
    _REGISTRY[name] = (target, install_hint)
    _LOADED.pop(name, None)


def _entry_points() -> None:
    try:
        eps = metadata.entry_points(group="cloudburst.backends")
    except Exception:  # pragma: no cover - broken metadata must not break the core
        return
    for ep in eps:
        _REGISTRY.setdefault(ep.name, (ep.value, ""))


def available() -> list[str]:
    """Names of the backends that can be asked for."""
    _entry_points()
    return sorted(_REGISTRY)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (or given as ``"module:Class"``); imports it on first use."""
    if name in _LOADED:
        return _LOADED[name]
    if ":" in name and name not in _REGISTRY:
        _REGISTRY[name] = (name, "")
    if name not in _REGISTRY:
        _entry_points()
    if name not in _REGISTRY:
        raise ConfigurationError(f"backend={name!r} is not known; available backends: {', '.join(available())}")
    target, hint = _REGISTRY[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = f"; {hint}" if hint else ""
        raise ConfigurationError(f"backend {name!r} cannot be loaded: {exc}{extra}") from exc
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigurationError(f"backend {name!r} ({target}) is not a cloudburst Backend subclass")
    _LOADED[name] = cls
    return cls
