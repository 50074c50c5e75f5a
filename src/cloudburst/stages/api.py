"""What a user writes: ``@stage`` makes a ``Stage``; calling a ``Stage`` makes a ``Node`` and runs nothing::

    @stage(cpu=2, memory="4GB")        Stage(fn, name="module:qualname", options=StageOptions(...))
    def fit(x, y): ...                   │  __call__ binds the signature now: a bad call fails where it is written
                                         ▼
    model = fit(load_x(), load_y())    Node(stage, "call", args, kwargs)    its inputs(): the two upstream nodes
    cloudburst.compute(model)          graph.Graph.build -> the scheduler (stages.runner) -> values

A ``Node`` stands for a value that does not exist yet. Using it as one (``bool``, ``len``, iteration,
indexing, ``numpy.asarray``, pickling) is a ``TypeError`` that says so. Nodes may sit anywhere in a call's
arguments inside lists, tuples (named tuples too) and dicts: ``find_nodes`` and ``substitute`` walk exactly
those; a node inside any other container (a set, a deque, a dict subclass) is refused when the call is made,
since it would reach the worker unresolved. Inside a worker, calling a stage calls its function: a stage
that calls another stage just calls it.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, overload

from .. import seeds
from ..config.options import parse_memory
from ..errors import ConfigurationError
from .node import Node, find_nodes, substitute

__all__ = ["Node", "Stage", "StageOptions", "find_nodes", "stage", "substitute"]

_SHAPE_FIELDS = ("cpu", "memory", "retries", "image", "requirements", "spot")


@dataclass(frozen=True)
class StageOptions:
    """A stage's settings, as given to the decorator or ``.options()``; ``None`` means "not set here".

    Values are checked when made (a bad ``cpu`` fails at the decorator); backend options (any other
    keyword) are kept, sorted by name, and checked by the ``Executor`` that runs the stage.
    """

    cpu: float | None = None
    memory: str | float | None = None
    retries: int | None = None
    image: str | None = None
    requirements: str | None = None
    spot: bool | None = None
    version: str | None = None
    cache: bool | None = None
    backend_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _check_options(self)
        for name in ("image", "requirements"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):  # requirements=Path("requirements.txt") is a path, as a str is
                object.__setattr__(self, name, os.fspath(value))
        object.__setattr__(self, "backend_options", tuple(sorted(dict(self.backend_options).items())))

    def merged(self, over: StageOptions) -> StageOptions:
        """These options with ``over``'s set (non-None) fields on top; backend options merged by name."""
        values = {f.name: getattr(self, f.name) for f in fields(StageOptions)}
        values.update(
            {f.name: getattr(over, f.name) for f in fields(StageOptions) if getattr(over, f.name) is not None}
        )
        values["backend_options"] = tuple({**dict(self.backend_options), **dict(over.backend_options)}.items())
        return StageOptions(**values)

    def executor_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Executor(...)`` these options ask for (unset ones left out)."""
        given = {name: getattr(self, name) for name in _SHAPE_FIELDS if getattr(self, name) is not None}
        return {**given, **dict(self.backend_options)}


def _check_options(options: StageOptions) -> None:
    """Refuse bad values with the message ``Executor`` gives for them, before anything runs."""
    cpu = options.cpu
    if cpu is not None and (
        isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu) or cpu <= 0
    ):
        raise ConfigurationError(f"cpu={cpu!r} must be a positive number of vCPUs, e.g. cpu=1 or cpu=0.5")
    if options.memory is not None:
        parse_memory(options.memory)
    retries = options.retries
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise ConfigurationError(
            f"retries={retries!r} must be a whole number ≥ 0 (how often a call whose worker died is run again)"
        )
    for name in ("image", "requirements"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ConfigurationError(f"{name}={value!r} must be a string, e.g. {name}='...'")
    for name in ("spot", "cache"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, bool):
            raise ConfigurationError(f"{name}={value!r} must be True or False")
    if options.version is not None and not isinstance(options.version, str):
        raise ConfigurationError(
            f"version={options.version!r} must be a string, e.g. version='{options.version}': "
            "it stands in for the stage's code in its cache key"
        )


def _make_options(settings: dict[str, Any]) -> StageOptions:
    """``StageOptions`` from keyword arguments: the named ones are fields, the rest backend options."""
    named = {f.name for f in fields(StageOptions)} - {"backend_options"}
    backend = tuple((key, value) for key, value in settings.items() if key not in named)
    return StageOptions(**{key: value for key, value in settings.items() if key in named}, backend_options=backend)


class _BoundOptions(StageOptions):
    """``stage.options``: the stage's ``StageOptions`` (fields, ``merged``, ``executor_options``) that can also
    be called, ``stage.options(cpu=4)``, for a copy of the stage with those options on top."""

    _stage_fn: Callable[..., Any]
    _stage_name: str

    def __call__(self, **overrides: Any) -> Stage:
        """The same function as a new ``Stage`` whose options are these with ``overrides`` on top
        (any decorator argument, ``name=`` included)."""
        name = overrides.pop("name", None)
        return Stage(self._stage_fn, name=name or self._stage_name, options=self.merged(_make_options(overrides)))

    def plain(self) -> StageOptions:
        """The same options as a plain ``StageOptions``."""
        return StageOptions(**{f.name: getattr(self, f.name) for f in fields(StageOptions)})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StageOptions):
            return self.plain() == (other.plain() if isinstance(other, _BoundOptions) else other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.plain())

    def __repr__(self) -> str:
        return repr(self.plain())


def _bind_options(options: StageOptions, fn: Callable[..., Any], name: str) -> _BoundOptions:
    bound = _BoundOptions(**{f.name: getattr(options, f.name) for f in fields(StageOptions)})
    object.__setattr__(bound, "_stage_fn", fn)
    object.__setattr__(bound, "_stage_name", name)
    return bound


class Stage:
    """A function that, called, makes a ``Node`` of the pipeline instead of running.

    ``name`` is ``"module:qualname"`` unless given; ``options`` is its ``StageOptions``, also callable:
    ``stage.options(cpu=4)(x)`` calls a copy with more CPU. ``stage.map(items)`` makes one call per item.
    """

    fn: Callable[..., Any]
    name: str
    options: _BoundOptions

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, options: StageOptions | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"stage() takes a function, not {type(fn).__name__}; for options write @stage(cpu=2, ...)")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name={name!r} must be a non-empty string")
        functools.update_wrapper(self, fn)
        self.fn = fn
        qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.name = name or f"{getattr(fn, '__module__', None) or '?'}:{qualname}"
        self.label = name or qualname
        self.options = _bind_options(options or StageOptions(), fn, self.name)
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none: their calls are checked when they run
            self._signature = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A ``Node`` for the call ``fn(*args, **kwargs)``; inside a worker, the call's value."""
        if seeds.current_item() is not None:
            return self.fn(*args, **kwargs)
        self._check_call(args, kwargs, "")
        return Node(self, "call", args=args, kwargs=kwargs)

    def map(self, *iterables: Any, chunksize: int | None = None, **broadcast: Any) -> Any:
        """A ``Node`` whose value is ``[fn(*item, **broadcast) for item in zip(*iterables, strict=False)]``.

        ``iterables`` are read now (zipped; the shortest ends it), or are ONE node whose value is a list:
        then the calls are made once that list is known. ``broadcast`` goes whole to every call.
        """
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ConfigurationError(f"chunksize={chunksize!r} must be a whole number ≥ 1, or None to choose")
        if not iterables:
            raise TypeError(f"{self.name}.map() needs something to map over: lists, or one node whose value is a list")
        if seeds.current_item() is not None:
            return [self.fn(*item, **broadcast) for item in zip(*iterables, strict=False)]
        if any(isinstance(it, Node) for it in iterables):
            if len(iterables) > 1:
                raise TypeError(
                    f"{self.name}.map() maps over one node at a time; "
                    "zip the lists inside a stage and map over its node"
                )
            self._check_call((None,), broadcast, ".map")
            return Node(self, "map", items=iterables[0], broadcast=broadcast, chunksize=chunksize)
        try:
            items = list(zip(*iterables, strict=False))  # the shortest ends it, as in map()
        except TypeError as exc:
            raise TypeError(f"{self.name}.map() takes iterables (or one node): {exc}") from None
        if items:  # every item has one length: binding the first checks them all
            self._check_call(items[0], broadcast, ".map")
        return Node(self, "map", items=items, broadcast=broadcast, chunksize=chunksize)

    def _check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], how: str) -> None:
        if self._signature is None:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            # Raised here, so the traceback ends at the user's call, not in a worker minutes later.
            raise TypeError(f"{self.name}{how}(): {exc}") from None

    def argument_name(self, position: int) -> str:
        """The name of positional parameter ``position`` (0-based), for messages."""
        params = list(self._signature.parameters.values()) if self._signature else []
        if position < len(params) and params[position].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            return params[position].name
        return f"positional argument {position + 1}"

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.options.executor_options().items())
        return f"<Stage {self.name}{' ' + shown if shown else ''}>"


@overload
def stage(fn: Callable[..., Any], /) -> Stage: ...


@overload
def stage(
    fn: None = None,
    /,
    *,
    cpu: float | None = None,
    memory: str | float | None = None,
    retries: int | None = None,
    image: str | None = None,
    requirements: str | None = None,
    spot: bool | None = None,
    version: str | None = None,
    cache: bool | None = None,
    name: str | None = None,
    **backend_options: Any,
) -> Callable[[Callable[..., Any]], Stage]: ...


def stage(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    cpu: float | None = None,
    memory: str | float | None = None,
    retries: int | None = None,
    image: str | None = None,
    requirements: str | None = None,
    spot: bool | None = None,
    version: str | None = None,
    cache: bool | None = None,
    name: str | None = None,
    **backend_options: Any,
) -> Stage | Callable[[Callable[..., Any]], Stage]:
    """Make ``fn`` a stage: ``@stage`` or ``@stage(cpu=2, memory="4GB", ...)``.

    ``cpu``, ``memory``, ``retries``, ``image``, ``requirements``, ``spot`` and any backend option size the
    workers that run it; ``version=`` replaces code hashing in its cache key; ``cache=False`` never
    memoizes it; ``name=`` replaces ``"module:qualname"``.
    """
    options = StageOptions(
        cpu=cpu,
        memory=memory,
        retries=retries,
        image=image,
        requirements=requirements,
        spot=spot,
        version=version,
        cache=cache,
        backend_options=tuple(backend_options.items()),
    )

    def decorate(function: Callable[..., Any]) -> Stage:
        if isinstance(function, Stage):  # a stage decorated again: its options, with these on top
            return Stage(function.fn, name=name or function.name, options=function.options.merged(options))
        return Stage(function, name=name, options=options)

    return decorate if fn is None else decorate(fn)
