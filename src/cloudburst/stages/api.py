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
import itertools
import math
import os
import reprlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal, overload

from .. import seeds
from ..config.options import parse_memory
from ..errors import ConfigurationError

__all__ = ["Node", "Stage", "StageOptions", "find_nodes", "stage", "substitute"]

NOT_A_VALUE = "a Node is not its value; pass it to another stage or to cloudburst.compute"
_SHAPE_FIELDS = ("cpu", "memory", "retries", "image", "requirements", "spot")
_serials = itertools.count()  # creation order of nodes: ranks siblings in call paths (graph.py)


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


class Node:
    """One stage call (``kind="call"``: ``args``, ``kwargs``) or one map over items (``kind="map"``: ``items``,
    the per-call positional arguments or the upstream node fanned out, ``broadcast``, ``chunksize``).

    A node is identified by the object: the same node passed twice is one call. It is not its value:
    pass it to another stage or to ``cloudburst.compute``.
    """

    __slots__ = (
        "__weakref__",
        "_inputs",
        "args",
        "broadcast",
        "chunksize",
        "items",
        "kind",
        "kwargs",
        "serial",
        "stage",
    )

    def __init__(
        self,
        stage: Stage,
        kind: Literal["call", "map"],
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        items: list[tuple[Any, ...]] | Node | None = None,
        broadcast: dict[str, Any] | None = None,
        chunksize: int | None = None,
    ) -> None:
        self.stage = stage
        self.kind = kind
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.items = items
        self.broadcast = dict(broadcast or {})
        self.chunksize = chunksize
        self.serial = next(_serials)  # creation order, for the ranks of sibling calls in call paths
        self._inputs = _collect_inputs(self)

    def inputs(self) -> list[Node]:
        """The upstream nodes this one takes, in order of appearance, each once."""
        return list(self._inputs)

    def compute(self, **kw: Any) -> Any:
        """``cloudburst.compute(self, **kw)``: run what this node needs and return its value."""
        from . import runner  # type: ignore[attr-defined,unused-ignore]  # runner imports this module

        return runner.compute(self, **kw)

    def visualize(
        self, format: str = "auto", filename: str | os.PathLike[str] | None = None, report: Any = None
    ) -> Any:
        """Draw the graph this node needs: a text tree in a terminal, a graphviz picture in a notebook,
        ``format="dot"`` for DOT source, ``"svg"``/``"png"`` into ``filename``; with a run report
        (``cloudburst.last_run()``), each call coloured by what it did. See ``stages.visualize``."""
        from .visualize import visualize as draw  # it builds a Graph, and graph.py imports this module

        return draw([self], format=format, filename=filename, report=report)

    def __repr__(self) -> str:
        if self.kind == "map":
            over = _REPR.repr(self.items) if isinstance(self.items, Node) else f"{len(self.items or ())} items"
            return f"<Node {self.stage.label}.map({over})>"
        shown = [_REPR.repr(arg) for arg in self.args]
        shown += [f"{key}={_REPR.repr(value)}" for key, value in self.kwargs.items()]
        return f"<Node {self.stage.label}({', '.join(shown)})>"

    def _misuse(self, *_: Any, **__: Any) -> Any:
        raise TypeError(NOT_A_VALUE)

    __bool__ = __iter__ = __len__ = __getitem__ = __contains__ = __array__ = _misuse
    __float__ = __int__ = __index__ = _misuse

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A node hidden where the pipeline cannot see it (inside an object, a global) would reach a worker
        # as a Node, not as its value: refuse it loudly.
        raise TypeError(
            f"{NOT_A_VALUE} (a Node cannot be pickled: put it in a stage's arguments, directly or in a "
            "list, tuple or dict, not inside another object or a global)"
        )


class _NodeRepr(reprlib.Repr):
    """Short reprs of arguments: an upstream node is ``name(…)``, never its own arguments (chains are long)."""

    def repr_Node(self, node: Node, level: int) -> str:
        return f"{node.stage.label}{'.map' if node.kind == 'map' else ''}(…)"


_REPR = _NodeRepr()


def _is_namedtuple(obj: object) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields") and hasattr(type(obj), "_make")


def _walked(obj: object) -> Iterable[Any] | None:
    """The children of a container nodes may sit in, or None for anything else."""
    kind = type(obj)
    if kind is list or kind is tuple or _is_namedtuple(obj):
        return obj  # type: ignore[return-value]
    if kind is dict:
        return obj.values()  # type: ignore[attr-defined,no-any-return]
    return None


def _any_node(obj: object) -> bool:
    """Whether a node sits anywhere inside ``obj``, through every builtin container (keys of dicts too)."""
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Node):
            return True
        if isinstance(item, (set, frozenset, deque, list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _hides_nodes(obj: object) -> bool:
    """Whether ``obj`` holds a node where the pipeline does not look: inside a container other than a list,
    tuple or dict (a set, a deque, a dict subclass, ...), or in a dict's keys."""
    if type(obj) is dict:
        return any(_any_node(key) for key in obj)
    if _walked(obj) is not None or not isinstance(obj, (set, frozenset, deque, list, tuple, dict)):
        return False
    return _any_node(obj)


def _walk(obj: object, hidden: Callable[[object], None] | None = None) -> Iterator[Node]:
    """The nodes in ``obj`` (a node, or lists/tuples/dicts holding them), depth first; ``hidden`` is called
    on each other container that holds a node."""
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Node):
            yield item
            continue
        children = _walked(item)
        if children is not None:
            if hidden is not None and type(item) is dict and _hides_nodes(item):
                hidden(item)
            stack.extend(reversed(list(children)))
        elif hidden is not None and _hides_nodes(item):
            hidden(item)


def find_nodes(obj: object) -> list[Node]:
    """The nodes inside ``obj`` (nested lists, tuples and dicts), in order of appearance, each once."""
    return _unique(_walk(obj))


def _unique(nodes: Iterable[Node]) -> list[Node]:
    seen: set[int] = set()
    found = []
    for node in nodes:
        if id(node) not in seen:
            seen.add(id(node))
            found.append(node)
    return found


def substitute(obj: Any, replace: Callable[[Node], Any]) -> Any:
    """``obj`` with each node replaced by ``replace(node)``: lists, tuples (named ones too) and dicts
    holding nodes are rebuilt; anything without a node is returned as is (not copied)."""
    if isinstance(obj, Node):
        return replace(obj)
    children = _walked(obj)
    if children is None:
        return obj
    if type(obj) is dict:
        values = {key: substitute(value, replace) for key, value in obj.items()}
        return values if any(values[key] is not obj[key] for key in obj) else obj
    new = [substitute(item, replace) for item in obj]
    if all(a is b for a, b in zip(new, obj, strict=True)):
        return obj
    if type(obj) is list:
        return new
    return tuple(new) if type(obj) is tuple else type(obj)._make(new)


def _collect_inputs(node: Node) -> list[Node]:
    """The node's upstream nodes; a node inside a set (or other container the pipeline does not walk) is a
    TypeError naming the stage and the argument."""
    name = node.stage.name + (".map" if node.kind == "map" else "")

    def parts() -> Iterator[tuple[str, object]]:
        for position, value in enumerate(node.args):
            yield f"argument `{node.stage.argument_name(position)}`", value
        for key, value in node.kwargs.items():
            yield f"argument `{key}`", value
        if isinstance(node.items, Node):
            yield "the items", node.items
        else:
            for index, item in enumerate(node.items or ()):
                yield f"item {index}", item
        for key, value in node.broadcast.items():
            yield f"argument `{key}`", value

    found: list[Node] = []
    for where, value in parts():

        def refuse(container: object, where: str = where) -> None:
            raise TypeError(
                f"{name}(): {where} holds a Node inside a {type(container).__name__}; nodes may sit only in "
                "lists, tuples and dicts (as values), where the pipeline finds them: pass e.g. a list instead"
            )

        found.extend(_walk(value, refuse))
    return _unique(found)
