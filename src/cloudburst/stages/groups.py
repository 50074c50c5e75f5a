"""Workers of one shape: an Executor per distinct set of worker options, opened at the shape's first cache
miss and shut down as soon as no stage of that shape is left to run.

A *shape* is what makes a worker (cpu, memory, image, requirements, spot, backend options) plus ``retries``.
The compute's own options are the base; a stage's decorator and ``.options()`` override them. Nothing here
is in a cache key: resources change where a stage runs, not what it returns.

Contract with the scheduler (which alone calls this, from its own thread):

- ``Group.remaining`` counts the graph's nodes of the shape not yet settled; ``holding`` the finished nodes
  whose results live in this executor's store and that a dependent not yet sent still needs.
- ``closable()`` is true once both are empty: the executor (its workers, queues and stored data) can go.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..backends import get_backend
from ..backends.base import Store
from ..config.options import check_known, parse_memory
from ..core import scratch
from ..executor import _CORE_PARAMETERS, Executor
from ..log import say
from ..protocol.serialize import Unpacker

if TYPE_CHECKING:
    from .node import Node

__all__ = ["PORTABLE", "Group", "Groups", "check_stage_options", "option_names", "shape_options"]


#: shape options any stage may set; a backend that has no such option runs the stage without it (the local
#: backend has no images or spot capacity), and says so once
PORTABLE = frozenset({"image", "requirements", "spot"})
_PER_RUN = frozenset({"workers", "max_workers", "backend", "seed", "progress"})


def option_names(backend: str) -> frozenset[str]:
    """The Executor options a stage (or ``compute``) may set for workers of ``backend``."""
    return (_CORE_PARAMETERS - _PER_RUN) | get_backend(backend).option_names


def check_stage_options(nodes: Iterable[Node], backend: str) -> None:
    """Refuse, before anything runs, a stage option that ``backend`` does not know (portable ones aside)."""
    valid = option_names(backend)
    seen: set[int] = set()
    for node in nodes:
        stage = node.stage
        if id(stage) in seen:
            continue
        seen.add(id(stage))
        given = set(stage.options.executor_options()) - PORTABLE
        check_known(sorted(given), valid, what=f"stage {stage.name} (backend={backend!r})")


def shape_options(node: Node, base: Mapping[str, Any]) -> dict[str, Any]:
    """The Executor options of ``node``'s workers: the compute's options under the stage's own."""
    merged = dict(base)
    merged.update(node.stage.options.executor_options())
    return merged


def _shape_key(options: Mapping[str, Any], defaults: Mapping[str, object]) -> str:
    """The same key for the same workers however the options are spelled: cpu as a number, with the backend's
    default filled in; memory in MiB (``"2GB"``, ``2`` and ``"2048MB"`` are one shape)."""
    normal = {name: value for name, value in options.items() if value is not None}
    normal["cpu"] = float(normal.get("cpu", defaults.get("cpu", 1)))
    if "memory" in normal:
        normal["memory"] = parse_memory(normal["memory"])
    return repr(sorted((name, repr(value)) for name, value in normal.items()))


class Group:
    """One shape's executor, made when first needed."""

    def __init__(self, key: str, options: dict[str, Any], backend: str, workers: int | None) -> None:
        self.key = key
        self.options = options
        self.backend = backend
        self.workers = workers
        self.executor: Executor | None = None
        self.remaining = 0
        self.holding: set[int] = set()
        self.closed = False
        self.closing = False  # a closer thread has been started
        self._close_lock = threading.Lock()
        self.job_id: str | None = None
        self.cost = 0.0
        self.hourly = 0.0

    def open(self) -> Executor:
        """The executor, started at the first call (no worker starts until work is submitted)."""
        if self.executor is None:
            options = {name: value for name, value in self.options.items() if value is not None}
            self.executor = Executor(self.workers, backend=self.backend, progress=False, **options)
            self.job_id = self.executor.job_id
            self.hourly = self.executor._job.backend.hourly_cost(1)
        return self.executor

    @property
    def store(self) -> Store:
        """The job store where this shape's results are."""
        return self.open()._job.resources.store

    @property
    def unpacker(self) -> Unpacker:
        """Reads values from this shape's job store (outputs only)."""
        return self.open()._job.unpacker

    @property
    def opened(self) -> bool:
        """Whether the executor exists and has not been closed."""
        return self.executor is not None and not self.closed and not self.closing

    def closable(self) -> bool:
        """No node of this shape left to run, and nothing in its store that a later call still needs."""
        return self.opened and self.remaining == 0 and not self.holding

    def close(self, *, terminate: bool = False) -> None:
        """Stop the workers and delete the job's queues and data (``terminate``: without waiting)."""
        with self._close_lock:
            if self.executor is None or self.closed:
                return
            self.closed = True
        with contextlib.suppress(Exception):
            self.cost = self.executor.cost
        if terminate:
            self.executor.terminate()
        else:
            self.executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.cost = self.executor.cost


class Groups:
    """The shapes of one compute, keyed by their options."""

    def __init__(self, backend: str, workers: int | None, base: Mapping[str, Any]) -> None:
        self.backend = backend
        self.workers = workers
        self.base = dict(base)
        self._groups: dict[str, Group] = {}
        self._valid = option_names(backend)
        self._defaults = get_backend(backend).defaults()
        self.ignored: set[str] = set()  # portable options this backend does not have (said once each)

    def for_node(self, node: Node) -> Group:
        """The group of ``node``'s shape (made, not opened, on first sight)."""
        options = shape_options(node, self.base)
        for name in PORTABLE & set(options) - self._valid:
            if options.pop(name) is not None and name not in self.ignored:
                self.ignored.add(name)
                say(
                    f"the {self.backend} backend has no {name!r} option: stage {node.stage.name} and others that "
                    f"set it run without it here (it applies on cloud backends)"
                )
        key = _shape_key(options, self._defaults)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(key, options, self.backend, self.workers)
        return group

    def __iter__(self) -> Any:
        return iter(list(self._groups.values()))

    def close_all(self, *, terminate: bool = False) -> None:
        """Close every opened executor; errors of one do not keep the others open."""
        for group in self:
            with contextlib.suppress(Exception):
                group.close(terminate=terminate)

    def cost(self) -> float:
        """USD the compute's workers have cost so far, summed over its shapes."""
        total = 0.0
        for group in self:
            if group.executor is not None and not group.closed:
                with contextlib.suppress(Exception):
                    group.cost = group.executor.cost
            total += group.cost
        return total

    def job_ids(self) -> list[str]:
        """The jobs the compute opened, one per shape that ran something."""
        return [group.job_id for group in self if group.job_id is not None]


def reader(store: Store) -> Unpacker:
    """An unpacker over ``store`` (the cache's blob store) with a scratch folder of its own."""
    return Unpacker(store, scratch.make("stage-cache-"))
