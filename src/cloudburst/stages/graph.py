"""The graph of nodes ``compute`` runs: every node the outputs need, inputs first, each once.

``Graph.build(outputs)`` walks upstream from the outputs without recursion (a 10,000-stage chain is
fine) and deduplicates by identity: one node passed to several stages is one call. Each node also gets
its **call path**, its place in the graph written out::

    __main__:fit(__main__:load_x()#0,__main__:load_y()#0)#0        stage(paths of its inputs)#k
    __main__:square.map(__main__:numbers()#0)#0                    a map node

``k`` ranks, in creation order, the nodes of one stage with the same inputs (``sample(), sample()`` are
``#0`` and ``#1``). Literal argument values are not in it, and neither is the order in which unrelated
branches were built: seeds derive from the path, so changing an argument changes values, not streams.
When the inputs' paths run long, a short sha256 of them stands in, so paths stay short in deep graphs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .node import Node, find_nodes, substitute

__all__ = ["Graph", "find_nodes", "substitute"]

_LONGEST_INPUTS = 120  # characters of input paths written out; beyond, their digest stands in


@dataclass
class Graph:
    """The nodes to run (topological: inputs first), who takes each, their call paths, and which nodes'
    lists a map node fans out over. Keys are ``id(node)``; the graph holds every node, so ids stay valid."""

    nodes: list[Node]
    dependents: dict[int, list[Node]]
    paths: dict[int, str]
    fanned: set[int]

    @classmethod
    def build(cls, outputs: Sequence[Node]) -> Graph:
        """The graph of everything ``outputs`` need."""
        for output in outputs:
            if not isinstance(output, Node):
                raise TypeError(
                    f"cloudburst.compute takes nodes (what calling a stage returns), not {type(output).__name__}"
                )
        nodes = _topological(outputs)
        dependents: dict[int, list[Node]] = {id(node): [] for node in nodes}
        fanned: set[int] = set()
        for node in nodes:
            for upstream in node.inputs():
                dependents[id(upstream)].append(node)
            if node.kind == "map" and isinstance(node.items, Node):
                fanned.add(id(node.items))
        return cls(nodes=nodes, dependents=dependents, paths=_paths(nodes), fanned=fanned)


def _topological(outputs: Sequence[Node]) -> list[Node]:
    """Depth-first post-order from the outputs, inputs in order of appearance: inputs before the nodes that
    take them, each node once. Iterative, so depth is not limited by Python's recursion limit."""
    order: list[Node] = []
    done: set[int] = set()
    for output in outputs:
        if id(output) in done:
            continue
        stack = [(output, iter(output.inputs()))]
        while stack:
            node, pending = stack[-1]
            for upstream in pending:
                if id(upstream) not in done:  # never on the stack: a node's inputs exist before it
                    stack.append((upstream, iter(upstream.inputs())))
                    break
            else:
                stack.pop()
                done.add(id(node))
                order.append(node)
    return order


def _paths(nodes: list[Node]) -> dict[int, str]:
    """The call path of each node (``nodes`` topological). Siblings (same stage name, kind and input nodes,
    hence the same input paths) are ranked by creation order."""
    siblings: dict[tuple[str, str, tuple[int, ...]], list[Node]] = {}
    for node in nodes:
        siblings.setdefault((node.kind, node.stage.name, tuple(map(id, node.inputs()))), []).append(node)
    rank: dict[int, int] = {}
    for group in siblings.values():
        for k, node in enumerate(sorted(group, key=lambda n: n.serial)):
            rank[id(node)] = k
    paths: dict[int, str] = {}
    for node in nodes:
        inner = ",".join(paths[id(upstream)] for upstream in node.inputs())
        if len(inner) > _LONGEST_INPUTS:
            inner = "~" + hashlib.sha256(inner.encode()).hexdigest()[:16]
        kind = ".map" if node.kind == "map" else ""
        paths[id(node)] = f"{node.stage.name}{kind}({inner})#{rank[id(node)]}"
    return paths
