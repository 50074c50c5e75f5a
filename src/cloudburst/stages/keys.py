"""The cache key of a stage call, and what changed between two calls of it.

A ``Fingerprint`` holds, as named components, everything a call's result depends on::

    stage        "module:qualname"
    code         unit -> digest        the stage's code and every user function/class it reaches (codehash)
    globals      "module:name" -> digest   values of the globals read            (valuehash)
    closure      "unit:var" -> digest  closure cells; "unit:var=" defaults
    packages     distribution -> version   installed code reached ("python" for the standard library)
    inputs       argument -> digest    by content; an upstream node by its result's digest (early cutoff)
    environment  image tag/URI or "local-py3.11"
    seed         "S/call path" when the run is seeded
    version      ``version=`` of the stage: replaces code, globals, closure and packages (left empty)

``key()`` hashes them all; ``upstream`` (which call produced an input) and ``previews`` (short reprs of
small values) only serve ``diff()``, whose lines say why a call ran: which function's code, which global,
which input changed. Resources (cpu, memory, retries, spot) are not in a fingerprint at all.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .codehash import CodeHasher
from .valuehash import preview

__all__ = ["Change", "Fingerprint", "fingerprint", "input_digests", "named_arguments"]

_FORMAT = "cbk1"
_MAPS = ("code", "globals", "closure", "packages", "inputs", "upstream", "previews")
_NOT_IN_KEY = frozenset({"upstream", "previews"})
_ARGUMENT_HINT = "pass a picklable value, or set cache=False on the stage"


@dataclass(frozen=True)
class Change:
    """One reason a call's key changed. ``kind``: "stage", "version", "code", "package", "global",
    "closure", "input", "environment" or "seed"; ``name``: the component's entry; ``detail``: the line
    ``explain=True`` prints (also ``str(change)``)."""

    kind: str
    name: str
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class Fingerprint:
    """Everything a stage call's result depends on, by name (see the module docstring)."""

    stage: str
    code: Mapping[str, str] = field(default_factory=dict)
    globals: Mapping[str, str] = field(default_factory=dict)
    closure: Mapping[str, str] = field(default_factory=dict)
    packages: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    upstream: Mapping[str, str] = field(default_factory=dict)
    environment: str | None = None
    seed: str | None = None
    version: str | None = None
    previews: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _MAPS:  # read-only copies: a fingerprint never changes after it is made
            object.__setattr__(self, name, types.MappingProxyType(dict(getattr(self, name))))

    def key(self) -> str:
        """The cache key: sha256 (64 hex digits) of the canonical JSON of every component but ``upstream``
        and ``previews``, tagged with the key format ("cbk1")."""
        body = {name: value for name, value in self.to_json().items() if name not in _NOT_IN_KEY}
        body["format"] = _FORMAT
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The fingerprint as plain JSON types (run records keep it to explain the next run)."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            out[spec.name] = dict(value) if spec.name in _MAPS else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        """The inverse of ``to_json``; unknown entries are ignored."""
        known = {spec.name for spec in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})

    def diff(self, old: Fingerprint) -> list[Change]:
        """Why this fingerprint's key differs from ``old``'s, most telling first; empty when it does not."""
        changes: list[Change] = []
        if self.stage != old.stage:
            changes.append(Change("stage", self.stage, f"stage {_show(old.stage)} → {_show(self.stage)}"))
        if self.version != old.version:
            changes.append(_version_change(old.version, self.version))
        elif self.version is None:  # code is hashed on both sides
            changes += self._code_changes(old)
            changes += _package_changes(old.packages, self.packages)
            changes += self._value_changes(old, "globals")
            changes += self._value_changes(old, "closure")
        changes += self._input_changes(old)
        for kind in ("environment", "seed"):
            before, after = getattr(old, kind), getattr(self, kind)
            if before != after:
                changes.append(Change(kind, kind, f"{kind} {before} → {after}"))
        return changes

    def _code_changes(self, old: Fingerprint) -> list[Change]:
        own, user = _show(self.stage), f" (used by {_show(self.stage)})"
        changes = []
        names = sorted(_union(old.code, self.code), key=lambda name: (name != self.stage, name))
        for name in names:
            before, after = old.code.get(name), self.code.get(name)
            if before == after:
                continue
            shown = _show(name)
            if before is None:
                text = f"code of {shown} is now used by {own}"
            elif after is None:
                text = f"code of {shown} is no longer used"
            else:
                text = f"code of {shown} changed" + ("" if name == self.stage else user)
            changes.append(Change("code", name, text))
        return changes

    def _value_changes(self, old: Fingerprint, kind: str) -> list[Change]:
        before_map: Mapping[str, str] = getattr(old, kind)
        after_map: Mapping[str, str] = getattr(self, kind)
        changes = []
        for name in sorted(_union(before_map, after_map)):
            before, after = before_map.get(name), after_map.get(name)
            if before == after:
                continue
            what = _value_name(kind, name)
            if before is None:
                text = f"{what} is now read"
            elif after is None:
                text = f"{what} is no longer read"
            else:
                text = f"{what} changed" + _previews(old.previews, self.previews, f"{kind}/{name}")
            changes.append(Change(kind.rstrip("s"), name, text))
        return changes

    def _input_changes(self, old: Fingerprint) -> list[Change]:
        changes = []
        for name in sorted(_union(old.inputs, self.inputs)):
            before, after = old.inputs.get(name), self.inputs.get(name)
            if before == after:
                continue
            if before is None or after is None:
                text = f"input {name} {'added' if before is None else 'removed'}"
            elif name in self.upstream:
                text = f"input {name} changed ({self.upstream[name]} returned different data)"
            else:
                text = f"input {name} changed" + _previews(old.previews, self.previews, f"inputs/{name}")
            changes.append(Change("input", name, text))
        return changes


def input_digests(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    hasher: CodeHasher,
    *,
    stage: str = "",
) -> tuple[dict[str, str], dict[str, str]]:
    """The digests of a call's arguments, by parameter name (defaults applied, so ``f(1)`` and ``f(1, 2)``
    share a key when 2 is the default), and the previews of small ones ("inputs/<name>"). The code of user
    functions and classes inside an argument counts in its digest."""
    digests: dict[str, str] = {}
    previews: dict[str, str] = {}
    for name, value in named_arguments(fn, args, kwargs):
        where = f"argument `{name}` of stage `{stage or getattr(fn, '__qualname__', fn)}`"
        digests[name] = hasher.value_digest(value, where=where, hint=_ARGUMENT_HINT)
        shown = preview(value)
        if shown is not None:
            previews[f"inputs/{name}"] = shown
    return digests, previews


def fingerprint(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    version: str | None = None,
    environment: str | None = None,
    seed: str | None = None,
    upstream: Mapping[str, str] | None = None,
    hasher: CodeHasher | None = None,
) -> Fingerprint:
    """The fingerprint of the call ``fn(*args, **kwargs)``. One ``hasher`` per compute hashes each unit and
    each value once; its ``substitute`` gives upstream nodes their result's digest."""
    hasher = hasher if hasher is not None else CodeHasher()
    stage = f"{getattr(fn, '__module__', None) or '?'}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    code = hasher.fingerprint(fn, version=version)
    inputs, input_previews = input_digests(fn, args, kwargs or {}, hasher, stage=_show(stage))
    return Fingerprint(
        stage=stage,
        code=code.code,
        globals=code.globals,
        closure=code.closure,
        packages=code.packages,
        inputs=inputs,
        upstream=upstream or {},
        environment=environment,
        seed=seed,
        version=version,
        previews={**code.previews, **input_previews},
    )


def named_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Iterator[tuple[str, Any]]:
    """A call's arguments by the names its fingerprint gives them (defaults applied)."""
    try:
        signature = inspect.signature(fn)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):  # no signature to bind to: by position and keyword
        yield from ((str(i), value) for i, value in enumerate(args))
        yield from ((f"k:{name}", kwargs[name]) for name in sorted(kwargs))
        return
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            yield from ((f"{name}[{i}]", item) for i, item in enumerate(value))
        elif kind is inspect.Parameter.VAR_KEYWORD:
            yield from ((f"{name}[{key!r}]", value[key]) for key in sorted(value))
        else:
            yield name, value


def _version_change(before: str | None, after: str | None) -> Change:
    if before is None:
        text = f"code hashing replaced by version={after!r}"
    elif after is None:
        text = f"version={before!r} removed: the code is hashed"
    else:
        text = f"version {before!r} → {after!r}"
    return Change("version", "version", text)


def _package_changes(before_map: Mapping[str, str], after_map: Mapping[str, str]) -> list[Change]:
    changes = []
    for name in sorted(_union(before_map, after_map)):
        before, after = before_map.get(name), after_map.get(name)
        if before == after:
            continue
        shown = "Python" if name == "python" else f"package {name}"
        if before is None:
            text = f"{shown} {after} is now used"
        elif after is None:
            text = f"{shown} is no longer used"
        else:
            text = f"{shown} {before} → {after}"
        changes.append(Change("package", name, text))
    return changes


def _value_name(kind: str, name: str) -> str:
    if kind == "globals":
        return f"global {_show(name)}"
    owner, _, var = name.rpartition(":")
    if var.endswith("="):
        return f"default of {var[:-1]} in {_show(owner)}"
    return f"closure variable {var} of {_show(owner)}"


def _previews(before: Mapping[str, str], after: Mapping[str, str], key: str) -> str:
    if key in before and key in after:
        return f" ({before[key]} → {after[key]})"
    return ""


def _show(name: str) -> str:
    """ "pipeline:fit_linear" → "pipeline.fit_linear"; "cfg:<module>" → "module cfg"."""
    module, _, rest = name.partition(":")
    if rest == "<module>":
        return f"module {module}"
    return f"{module}.{rest}" if rest else module


def _union(a: Mapping[str, str], b: Mapping[str, str]) -> set[str]:
    return set(a) | set(b)
