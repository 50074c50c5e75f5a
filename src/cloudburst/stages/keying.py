"""Cache keys of a compute's nodes: one ``CodeHasher`` per compute, upstream nodes counted by the digest of
the value they produced (early cutoff), seeds by the node's structural call path.

The scheduler keys a node only once all its inputs are known; ``precheck`` runs first, before anything
starts, so a global or argument that cannot be hashed is a ``StageHashError`` while no money is spent.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import Any

from .codehash import CodeHasher
from .graph import find_nodes
from .keys import Fingerprint, fingerprint, named_arguments
from .node import Node
from .refs import ArgRef

__all__ = ["Keyer", "aggregate_key", "environment_of", "parts_key"]


def environment_of(options: dict[str, Any]) -> str:
    """What the environment adds to keys, known on this machine without a request: the Python minor version
    (packages count by their installed versions, which environment sync reproduces on workers), and the image
    as named when a stage runs on one."""
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    image = options.get("image")
    return f"{python} image={image}" if image else python


def aggregate_key(item_keys: list[str]) -> str:
    """The key of a whole ``map`` node: its items' keys, in order."""
    hasher = hashlib.sha256(b"cbmap1")
    for key in item_keys:
        hasher.update(key.encode())
    return hasher.hexdigest()


def parts_key(key: str) -> str:
    """The key of a call whose list result is stored element by element (for a fan-out): an entry of its own,
    since an entry of the whole list cannot be fanned out without reading it."""
    return hashlib.sha256(f"cbparts1/{key}".encode()).hexdigest()


class Keyer:
    """Fingerprints the calls of one compute. ``digest_of`` gives an upstream node's result digest."""

    def __init__(self, digest_of: Callable[[Node], str | None], seed: int | None) -> None:
        self.digest_of = digest_of
        self.seed = seed
        self.hasher = CodeHasher(substitute=self._substitute)

    def _substitute(self, obj: object) -> str | None:
        if isinstance(obj, ArgRef):
            return obj.ref.digest
        if isinstance(obj, Node):
            return self.digest_of(obj)
        return None

    def precheck(self, node: Node) -> None:
        """Hash the stage's code and its plain arguments now: a value that cannot be hashed fails the compute
        before anything runs. (Arguments holding nodes are hashed once those nodes are done.)"""
        stage = node.stage
        self.hasher.fingerprint(stage.fn, version=stage.options.version)
        plain = [value for value in (*node.args, *node.kwargs.values()) if not find_nodes(value)]
        if node.kind == "map":
            plain += [value for value in node.broadcast.values() if not find_nodes(value)]
        for value in plain:
            self.hasher.value_digest(value, where=f"an argument of stage `{stage.name}`")

    def call(
        self, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any], path: str, environment: str
    ) -> Fingerprint:
        """The fingerprint of one call of ``node``'s stage (a map item passes its own args and path)."""
        stage = node.stage
        return fingerprint(
            stage.fn,
            args,
            kwargs,
            version=stage.options.version,
            environment=environment,
            seed=None if self.seed is None else f"{self.seed}/{path}",
            upstream=self._upstream(stage.fn, args, kwargs),
            hasher=self.hasher,
        )

    @staticmethod
    def _upstream(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, str]:
        upstream: dict[str, str] = {}
        for name, value in named_arguments(fn, args, kwargs):
            names = [node.stage.name for node in find_nodes(value)]
            if names:
                upstream[name] = ", ".join(dict.fromkeys(names))
        return upstream
