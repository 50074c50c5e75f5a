"""A ``Node``: one stage call, or one map over items, that stands for a value not computed yet; and the
walk over a call's arguments that finds the nodes in them (inside lists, tuples, named tuples and dicts, and
nowhere else: a node in any other container is refused when the call is made).
"""

from __future__ import annotations

import itertools
import os
import reprlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .api import Stage

__all__ = ["NOT_A_VALUE", "Node", "find_nodes", "substitute"]

NOT_A_VALUE = "a Node is not its value; pass it to another stage or to cloudburst.compute"
_serials = itertools.count()  # creation order of nodes: ranks siblings in call paths (graph.py)


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
