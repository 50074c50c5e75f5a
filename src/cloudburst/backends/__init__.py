"""Backends: a named bundle of Store + Queue + Launcher, chosen from a registry.

The contracts are tiny on purpose (see ``base``); everything else lives in the
core. Backends are found by name, imported lazily, and a backend whose
dependencies are missing says what to install.

Besides its class, a registration may name two light modules of the backend, importable
without its dependencies: its setting keys (``settings``, a sequence of
``cloudburst.config.userconfig.Key``) and its command-line extension (``cli``, a module with
``COMMANDS``, click commands, and ``explain(exc)``, one line for an error of its own kind, or None).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from ..errors import ConfigurationError
from .base import Backend, JobResources, Launcher, Message, Queue, Store, WorkerExit

__all__ = [
    "Backend",
    "JobResources",
    "Launcher",
    "Message",
    "Queue",
    "Registration",
    "Store",
    "WorkerExit",
    "available",
    "cli_extensions",
    "get_backend",
    "register",
    "settings_keys",
    "unregister",
]


@dataclass(frozen=True)
class Registration:
    """How to find a backend: its class as ``"module:Class"``, what to install if it cannot load, its extensions."""

    target: str
    install_hint: str = ""
    settings: str = ""  # "module:attribute": the backend's setting keys
    cli: str = ""  # "module": the backend's commands and error explanations


_REGISTRY: dict[str, Registration] = {
    "local": Registration("cloudburst.backends.local:LocalBackend"),
    "inline": Registration("cloudburst.backends.inline:InlineBackend"),
    "fargate": Registration(
        "cloudburst.backends.aws.fargate:FargateBackend",
        "install the AWS extra: pip install 'cloudburst[aws]'",
        settings="cloudburst.backends.aws.settings:KEYS",
        cli="cloudburst.backends.aws.commands",
    ),
}
_LOADED: dict[str, type[Backend]] = {}


def register(name: str, target: str, install_hint: str = "", *, settings: str = "", cli: str = "") -> None:
    """Register a backend class by import path, e.g. ``register("mine", "pkg.mod:MyBackend")``.

    ``settings`` names its setting keys (``"pkg.keys:KEYS"``), ``cli`` its command module; both are optional.
    """
    _REGISTRY[name] = Registration(target, install_hint, settings, cli)
    _LOADED.pop(name, None)


def unregister(name: str) -> None:
    """Forget the backend registered as ``name`` (its keys and commands go with it)."""
    _REGISTRY.pop(name, None)
    _LOADED.pop(name, None)


def _extensions(kind: str) -> list[str]:
    """The ``settings`` or ``cli`` targets of the registered backends, each once (backends may share them)."""
    found = [getattr(entry, kind) for entry in _REGISTRY.values()]
    return list(dict.fromkeys(t for t in found if t))


def settings_keys() -> list[object]:
    """The setting keys every registered backend declares (imports only their light settings modules)."""
    found: list[object] = []
    for target in _extensions("settings"):
        module_name, _, attr = target.partition(":")
        found.extend(getattr(importlib.import_module(module_name), attr))
    return found


def cli_extensions() -> list[ModuleType]:
    """The command modules of the registered backends (each imports its backend's dependencies only as it runs)."""
    return [importlib.import_module(module_name) for module_name in _extensions("cli")]


def _entry_points() -> None:
    try:
        eps = metadata.entry_points(group="cloudburst.backends")
    except Exception:  # pragma: no cover - broken metadata must not break the core
        return
    for ep in eps:
        _REGISTRY.setdefault(ep.name, Registration(ep.value))


def available() -> list[str]:
    """Names of the backends that can be asked for."""
    _entry_points()
    return sorted(_REGISTRY)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (or given as ``"module:Class"``); imports it on first use."""
    if name in _LOADED:
        return _LOADED[name]
    if ":" in name and name not in _REGISTRY:
        _REGISTRY[name] = Registration(name)
    if name not in _REGISTRY:
        _entry_points()
    if name not in _REGISTRY:
        raise ConfigurationError(f"backend={name!r} is not known; available backends: {', '.join(available())}")
    target, hint = _REGISTRY[name].target, _REGISTRY[name].install_hint
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
