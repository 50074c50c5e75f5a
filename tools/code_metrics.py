"""Print the package's size and coupling figures: the largest modules and functions, function-level imports
of cloudburst's own modules, and cycles among module-level imports.

Usage: ``python tools/code_metrics.py [checkout]`` (default: this checkout).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def module_name(path: Path, package: Path) -> str:
    """``cloudburst.core.job`` for ``src/cloudburst/core/job.py``; a package is named by its folder."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, package_of: str, modules: set[str]) -> list[str]:
    """The package's own modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if node.level:
        base = package_of.split(".")[: len(package_of.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
    if len(submodules) == len(node.names):  # ``from . import tasks``: the submodules, not the package's own names
        return submodules
    return ([source] if source in modules else []) + submodules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def main(checkout: Path) -> None:
    """Print the figures for the checkout's ``src/cloudburst``."""
    package = checkout / "src" / "cloudburst"
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in paths}
    lines: dict[str, int] = {}
    functions: list[tuple[int, str]] = []
    late_imports = 0
    module_level: dict[str, set[str]] = defaultdict(set)  # imports of own modules at module level, both ways
    every: dict[str, set[str]] = defaultdict(set)  # ... and inside functions too
    for path in paths:
        name = module_name(path, package)
        package_of = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        lines[name] = len(path.read_text().splitlines())
        module_level[name], every[name] = set(), set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module_level[name].update(imported(node, package_of, modules))
        typing_only = {  # imports under ``if TYPE_CHECKING:`` never run
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(((node.end_lineno or node.lineno) - node.lineno + 1, f"{name}.{node.name}"))
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and imported(inner, package_of, modules):
                        late_imports += 1
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                every[name].update(imported(node, package_of, modules))
    for graph in (module_level, every):  # a package imports its own submodules: not a cycle worth naming
        for name, targets in graph.items():
            targets.discard(name)
    largest = sorted(lines.items(), key=lambda kv: -kv[1])
    functions.sort(reverse=True)
    print(f"modules: {len(lines)}; over 500 lines: {sum(n > 500 for n in lines.values())}")
    print("largest modules:", ", ".join(f"{m} ({n})" for m, n in largest[:5]))
    print(f"functions over 60 lines: {sum(n > 60 for n, _ in functions)}")
    print("largest functions:", ", ".join(f"{f} ({n})" for n, f in functions[:5]))
    print(f"function-level imports of cloudburst's own modules: {late_imports}")
    print("import cycles at module level:", cycles(module_level) or "none")
    print("import cycles counting function-level imports:", cycles(every) or "none")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
