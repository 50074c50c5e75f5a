"""Pictures of a pipeline: ``node.visualize()``.

One drawing (boxes: each call's name and worker shape, ``2 vCPU, 4 GB``; arrows: data flowing from a
stage to the stages that take its value), four ways to show it:

* ``"text"``: a tree, outputs at the top and their inputs below; a node reached a second time is drawn
  once and then named ``→ name (above)``. What ``"auto"`` gives in a terminal.
* ``"dot"``: DOT source, for Graphviz or any tool that reads it. Needs nothing installed.
* ``"svg"``/``"png"``: rendered by the ``graphviz`` package and Graphviz's ``dot`` program
  (``pip install 'cloudburst[viz]'``), written to ``filename``.
* in a notebook with ``graphviz`` installed, ``"auto"`` gives a ``graphviz.Digraph``, which renders inline.

With a run report (``cloudburst.last_run()``), each call is marked by what it did: cached, ran, failed,
skipped or cancelled (a report's records name calls by their call path, ``graph.Graph.paths``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.options import parse_memory
from ..core.progress import _in_notebook
from ..errors import ConfigurationError
from .graph import Graph
from .node import Node

__all__ = ["TextTree", "to_dot", "to_text", "visualize"]

FORMATS = ("auto", "text", "dot", "svg", "png")
_SUFFIXES = {".txt": "text", ".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}
# Fill colours by status; the worst status of a call's records wins when it has several.
_COLOURS = {"cached": "#cfe2f3", "ran": "#d9ead3", "skipped": "#eeeeee", "cancelled": "#fce5cd", "failed": "#f4cccc"}
_WORST_LAST = ("cached", "ran", "skipped", "cancelled", "failed")
_INSTALL = "pip install 'cloudburst[viz]', and Graphviz itself (apt install graphviz, brew install graphviz)"


class TextTree(str):
    """The text drawing: a ``str`` that shows as the tree itself at a Python prompt."""

    def __repr__(self) -> str:
        return str(self)


@dataclass
class _Box:
    id: str
    name: str
    shape: str
    path: str
    status: str | None


@dataclass
class _Drawing:
    graph: Graph
    boxes: dict[int, _Box] = field(default_factory=dict)
    outputs: list[Node] = field(default_factory=list)


def visualize(
    outputs: Sequence[Node], format: str = "auto", filename: str | os.PathLike[str] | None = None, report: Any = None
) -> Any:
    """Draw what ``outputs`` need (see the module docstring): a ``TextTree``, DOT source, the SVG/PNG bytes
    (or the ``Path`` written when ``filename`` is given), or in a notebook a ``graphviz.Digraph``."""
    chosen = _format(format, filename)
    drawing = _drawing(outputs, report)
    if chosen == "notebook":
        return _digraph(drawing)
    if chosen in ("svg", "png"):
        data = _render(drawing, chosen)
        return _write(filename, data) if filename is not None else data
    text = TextTree(to_text(drawing)) if chosen == "text" else to_dot(drawing)
    return _write(filename, text.encode()) if filename is not None else text


def _format(format: str, filename: str | os.PathLike[str] | None) -> str:
    """The format ``"auto"`` stands for here: the file's suffix, a notebook's Digraph, else text."""
    if format not in FORMATS:
        raise ConfigurationError(f"format={format!r} is not known; use one of {', '.join(map(repr, FORMATS))}")
    if format != "auto":
        return format
    if filename is not None:
        suffix = Path(filename).suffix.lower()
        if suffix not in _SUFFIXES:
            raise ConfigurationError(
                f"cannot tell the format of {os.fspath(filename)!r} from its suffix; name it .svg, .png, .dot or "
                ".txt, or pass format="
            )
        return _SUFFIXES[suffix]
    if _in_notebook():
        try:
            importlib.import_module("graphviz")
        except ImportError:
            return "text"
        return "notebook"
    return "text"


def _drawing(outputs: Sequence[Node], report: Any) -> _Drawing:
    graph = Graph.build(outputs)
    statuses = _statuses(report)
    drawing = _Drawing(graph=graph, outputs=list(outputs))
    for number, node in enumerate(graph.nodes):
        path = graph.paths[id(node)]
        drawing.boxes[id(node)] = _Box(f"n{number}", _name(node), shape_text(node), path, statuses.get(path))
    return drawing


def _statuses(report: Any) -> dict[str, str]:
    """Call path -> status, from a ``RunReport`` (or anything whose ``stages`` have ``call`` and ``status``)."""
    found: dict[str, str] = {}
    for record in getattr(report, "stages", None) or ():
        call, status = getattr(record, "call", None), getattr(record, "status", None)
        if not isinstance(call, str) or status not in _WORST_LAST:
            continue
        if call not in found or _WORST_LAST.index(status) > _WORST_LAST.index(found[call]):
            found[call] = status
    return found


def _name(node: Node) -> str:
    if node.kind != "map":
        return node.stage.label
    count = "" if isinstance(node.items, Node) else f"[{len(node.items or ())}]"
    return f"{node.stage.label}.map{count}"


def shape_text(node: Node) -> str:
    """The worker shape a node's stage asks for, e.g. ``"2 vCPU, 4 GB"``; ``""`` when it asks for none."""
    options = node.stage.options
    parts = []
    if options.cpu is not None:
        parts.append(f"{options.cpu:g} vCPU")
    if options.memory is not None:
        parts.append(f"{parse_memory(options.memory) / 1024:g} GB")
    if options.spot:
        parts.append("spot")
    return ", ".join(parts)


def to_text(drawing: _Drawing) -> str:
    """The tree: each output, then its inputs indented below it; a node drawn once, then ``→ name (above)``."""
    lines: list[str] = []
    drawn: set[int] = set()
    # (node, prefix of its line, prefix of its children's lines); pushed in reverse so the first input prints first
    stack: list[tuple[Node, str, str]] = [(node, "", "") for node in reversed(drawing.outputs)]
    while stack:
        node, lead, below = stack.pop()
        box = drawing.boxes[id(node)]
        if id(node) in drawn:
            lines.append(f"{lead}→ {box.name} (above)")
            continue
        drawn.add(id(node))
        details = "  ".join(part for part in (box.shape, f"[{box.status}]" if box.status else "") if part)
        lines.append(f"{lead}{box.name}{'  ' + details if details else ''}")
        inputs = node.inputs()
        for index in reversed(range(len(inputs))):
            last = index == len(inputs) - 1
            stack.append((inputs[index], below + ("└── " if last else "├── "), below + ("    " if last else "│   ")))
    return "\n".join(lines) + "\n"


def _label(box: _Box) -> str:
    lines = [box.name] + [part for part in (box.shape, box.status) if part]
    return "\n".join(lines)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _attributes(box: _Box) -> dict[str, str]:
    return {"label": _label(box), "tooltip": box.path, "fillcolor": _COLOURS.get(box.status or "", "white")}


_GRAPH = {"rankdir": "TB"}
_NODE = {"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"}


def to_dot(drawing: _Drawing) -> str:
    """DOT source of the drawing (arrows from a stage to the stages that take its value)."""
    lines = ["digraph pipeline {"]
    lines += [f"  {key}={_quote(value)};" for key, value in _GRAPH.items()]
    lines.append(f"  node [{', '.join(f'{key}={_quote(value)}' for key, value in _NODE.items())}];")
    for node in drawing.graph.nodes:
        box = drawing.boxes[id(node)]
        lines.append(f"  {box.id} [{', '.join(f'{key}={_quote(value)}' for key, value in _attributes(box).items())}];")
    for node in drawing.graph.nodes:
        for upstream in node.inputs():
            lines.append(f"  {drawing.boxes[id(upstream)].id} -> {drawing.boxes[id(node)].id};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _graphviz() -> Any:
    try:
        return importlib.import_module("graphviz")
    except ImportError as exc:
        raise ImportError(f"drawing a picture of a pipeline needs the graphviz package: {_INSTALL}") from exc


def _digraph(drawing: _Drawing) -> Any:
    """The drawing as a ``graphviz.Digraph`` (it renders inline in notebooks)."""
    digraph = _graphviz().Digraph("pipeline", graph_attr=_GRAPH, node_attr=_NODE)
    for node in drawing.graph.nodes:
        box = drawing.boxes[id(node)]
        attributes = _attributes(box)
        attributes["label"] = attributes["label"].replace("\n", "\\n")  # graphviz quotes, but keeps \n escapes
        digraph.node(box.id, **attributes)
    for node in drawing.graph.nodes:
        for upstream in node.inputs():
            digraph.edge(drawing.boxes[id(upstream)].id, drawing.boxes[id(node)].id)
    return digraph


def _render(drawing: _Drawing, format: str) -> bytes:
    """SVG or PNG bytes, by Graphviz's ``dot``."""
    digraph = _digraph(drawing)
    try:
        data: bytes = digraph.pipe(format=format)
    except _graphviz().ExecutableNotFound as exc:
        raise RuntimeError(f"drawing {format.upper()} needs Graphviz's `dot` program: {_INSTALL}") from exc
    return data


def _write(filename: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(filename)
    path.write_bytes(data)
    return path
