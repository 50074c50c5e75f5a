"""The run of one compute: each node of the graph is keyed, looked up, sent, and settled, in that order.

::

    waiting ──(inputs done)──► keyed ──► looking ──(hit)──────────────► cached
                  │                         └──(miss)──► sent ──► ran | failed
                  └──(an input failed)──► skipped

- A node starts as soon as its own inputs are done, never a whole level at a time (dask's dependency
  counting): ``waiting`` counts unfinished inputs; when one finishes, its dependents' counts drop.
- Only this thread changes node state. Futures, map runs and cache lookups finish on other threads and post
  an event to ``events``; ``run`` takes them one at a time.
- A node's result stays where the worker stored it (``NodeState.store``); a dependent's call gets an
  ``ArgRef`` to it, and its blobs are copied store-to-store (server-side on S3) into the dependent's job.
  The client reads values only for the outputs ``compute`` returns.
- A shape's executor closes once no node of that shape is left and no later call needs what it stores (see
  ``groups.py``); results it still holds for a later call move to the cache first, when the cache has them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import seeds
from ..backends.base import Store
from ..backends.local import LocalStore
from .cache import StageCache
from .graph import Graph, substitute
from .groups import Group, Groups
from .keying import Keyer, aggregate_key, environment_of, parts_key
from .keys import Fingerprint
from .node import Node
from .refs import ArgRef, StageResult, ValueRef
from .remote import StageCall, copy_blobs
from .settle import Settler

__all__ = ["NodeState", "RunSettings", "Scheduler"]

_LOOKUP_THREADS = 16
_EVENT_WAIT = 0.25  # seconds between looks at Ctrl-C while nothing happens


@dataclass(frozen=True)
class RunSettings:
    """What ``compute`` was asked, once validated."""

    backend: str
    seed: int | None
    cache: bool
    workers: int | None
    options: dict[str, Any]


@dataclass
class NodeState:
    """One node during a run. Changed only by the scheduler's thread."""

    node: Node
    path: str
    group: Group
    waiting: int
    status: str = "waiting"
    ref: ValueRef | None = None
    store: Store | None = None
    key: str | None = None
    fingerprint: Fingerprint | None = None
    item_keys: list[str] = field(default_factory=list)
    item_refs: list[ValueRef | None] = field(default_factory=list)
    error: BaseException | None = None
    needers: set[int] = field(default_factory=set)
    home: Group | None = None  # the shape whose job store holds the result (None: the cache's)
    twins: list[NodeState] = field(default_factory=list)  # nodes with the same key, waiting on this one
    result: StageResult | None = None
    items_ran: int = 0
    started: float | None = None
    ended: float | None = None
    worker: str | None = None
    seconds: float = 0.0

    @property
    def settled(self) -> bool:
        return self.status in ("cached", "ran", "failed", "skipped", "cancelled")

    @property
    def caching(self) -> bool:
        return self.key is not None


class Scheduler:
    """Runs a graph to the end: every node cached, ran, failed or skipped."""

    def __init__(self, graph: Graph, outputs: list[Node], settings: RunSettings, cache: StageCache | None) -> None:
        self.graph = graph
        self.outputs = outputs
        self.settings = settings
        self.cache = cache
        self.groups = Groups(settings.backend, settings.workers, settings.options)
        self.events: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        self.states: dict[int, NodeState] = {}
        for node in graph.nodes:
            group = self.groups.for_node(node)
            group.remaining += 1
            self.states[id(node)] = NodeState(node, graph.paths[id(node)], group, len(node.inputs()))
        self.unsettled = len(self.states)
        self.ready_nodes: deque[NodeState] = deque()  # inputs done, not yet started (see _start_ready)
        self._later: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self.keyer = Keyer(self._digest_of, settings.seed)
        self.settler = Settler(self)
        self._lookups = ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="cloudburst-stage-lookup")
        self._closers: list[threading.Thread] = []
        self._calls: dict[tuple[int, bool], StageCall] = {}
        self.by_key: dict[str, NodeState] = {}  # the first node of each key (see _twin_of)
        self._local_cache = cache is not None and isinstance(cache.store, LocalStore)
        self.on_change: Callable[[], None] | None = None

    # -- the loop --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run every node to a settled state (raises only for Ctrl-C or a fault of cloudburst itself)."""
        for node in self.graph.nodes:
            if self._caching(node):
                self.keyer.precheck(node)
        try:
            self.ready_nodes.extend(state for state in self.states.values() if state.waiting == 0)
            self._start_ready()
            while self.unsettled:
                try:
                    kind, node_id, payload = self.events.get(timeout=_EVENT_WAIT)
                except queue.Empty:
                    continue
                self.handle(kind, self.states[node_id], payload)
                self._start_ready()
        except BaseException:
            self.stop(terminate=True)
            raise
        self.stop(terminate=False)

    def handle(self, kind: str, state: NodeState, payload: Any) -> None:
        """One event from another thread."""
        if state.settled:
            return
        if kind == "looked":
            self.looked(state, payload)
        elif kind == "items-looked":
            self.items_looked(state, payload)
        elif kind == "called":
            self.called(state, payload)
        elif kind == "mapped":
            self.mapped(state, payload)
        elif kind == "failed":
            self.settler.fail(state, payload)

    def _start_ready(self) -> None:
        """Start the nodes whose inputs are done, in the order they became ready, then do the work put off
        until they were sent (cache records). A list, not recursion: a cached chain settles node after node
        without returning to the loop."""
        while self.ready_nodes or self._later:
            while self.ready_nodes:
                state = self.ready_nodes.popleft()
                if state.status == "waiting":
                    self.ready(state)
            if self._later:
                step, args = self._later.popleft()
                step(*args)

    def do_later_now(self) -> None:
        """Do the put-off work at once (before waiting for the cache's writes)."""
        while self._later:
            step, args = self._later.popleft()
            step(*args)

    def later(self, step: Callable[..., object], *args: Any) -> None:
        """Do ``step(*args)`` once the nodes ready now have been sent: off the critical path of a chain."""
        self._later.append((step, args))

    def stop(self, *, terminate: bool) -> None:
        """Close every executor and wait for the cache's writes (briefly, when stopping at once)."""
        self._lookups.shutdown(wait=not terminate, cancel_futures=True)
        self.groups.close_all(terminate=terminate)
        for closer in self._closers:
            closer.join()
        if self.cache is not None:
            self.cache.flush(timeout=2.0 if terminate else None)

    # -- steps -----------------------------------------------------------------------------------------------

    def ready(self, state: NodeState) -> None:
        """All inputs of ``state`` are settled: skip it, or key it and look it up, or send it."""
        failed = [self.states[id(n)] for n in state.node.inputs() if self.states[id(n)].status in ("failed", "skipped")]
        if failed:
            self.settler.skip(state, failed[0])
            return
        node = state.node
        environment = environment_of(state.group.options)
        if node.kind == "map":
            try:
                self._key_items(state, environment)
            except TypeError as exc:  # a fan-out over a value that is not a list
                self.settler.fail(state, exc)
                return
        elif self._caching(node):
            state.fingerprint = self.keyer.call(node, node.args, node.kwargs, state.path, environment)
            # A producer fanned out stores its elements one by one: an entry of its own, not a whole list's.
            key = state.fingerprint.key()
            state.key = parts_key(key) if id(node) in self.graph.fanned else key
        if state.key is None or self.cache is None:
            self.send(state)
            return
        if self._twin_of(state):
            return
        state.status = "looking"
        if self._local_cache:  # a file read: cheaper than a hop to a lookup thread and back
            self.looked(state, self.cache.lookup(node.stage.name, state.key))
            return
        self._post_when_done(self._lookups.submit(self.cache.lookup, node.stage.name, state.key), "looked", state)

    def _twin_of(self, state: NodeState) -> bool:
        """Whether another node with ``state``'s key is running (``state`` then waits for its result) or has
        run with a result that needs no stored blob (``state`` takes it): equal keys run once per compute.
        Else ``state`` becomes the node of its key, and its key is looked up; the cache's writer is flushed
        first when an earlier node of that key ran, so the lookup finds its entry."""
        assert state.key is not None and self.cache is not None
        holder = self.by_key.get(state.key)
        if holder is None or holder.status in ("failed", "skipped"):
            self.by_key[state.key] = state
            return False
        if not holder.settled:
            state.status = "twin"
            holder.twins.append(state)
            return True
        if holder.ref is not None and not holder.ref.blobs():
            self.settler.done(state, holder.ref, holder.store or self.cache.store, "cached", holder.home)
            return True
        self.do_later_now()
        self.cache.flush()
        return False

    def looked(self, state: NodeState, ref: ValueRef | None) -> None:
        """The answer of the cache for a node's key (a map: for the whole node)."""
        if ref is not None and self.cache is not None and self.settler.usable(state, ref):
            self.settler.done(state, ref, self.cache.store, "cached")
        elif state.node.kind == "map" and self.cache is not None:
            cache, name, keys = self.cache, state.node.stage.name, list(state.item_keys)
            self._post_when_done(self._lookups.submit(_look_all, cache, name, keys), "items-looked", state)
        else:
            self.send(state)

    def items_looked(self, state: NodeState, refs: list[ValueRef | None]) -> None:
        """The cache's answers for each item of a map node whose whole entry was missing."""
        state.item_refs = refs
        if all(ref is not None for ref in refs):
            self.settler.map_done(state, {})
        else:
            self.send(state)

    def send(self, state: NodeState) -> None:
        """Submit the node's call (or its items not in the cache) to the executor of its shape. A call that
        cannot be sent (an input's stored value is gone, the executor cannot start) fails alone."""
        try:
            self._send(state)
        except Exception as exc:
            self.settler.fail(state, exc)

    def _send(self, state: NodeState) -> None:
        node, group = state.node, state.group
        executor = group.open()
        seed = None if self.settings.seed is None else seeds.stage_seed(self.settings.seed, state.path)
        call = self._call_of(node)
        state.status = "sent"
        state.started = time.time()
        if node.kind == "call":
            args = substitute(node.args, lambda n: self._forward(n, group))
            kwargs = substitute(node.kwargs, lambda n: self._forward(n, group))
            self._post_when_done(executor.submit(call, 0, args, kwargs, seed), "called", state)
        else:
            if isinstance(node.items, Node):
                self._forward(node.items, group)  # the parts' blobs, all at once
            items = self._items(state, lambda n: self._forward(n, group))
            broadcast = substitute(node.broadcast, lambda n: self._forward(n, group))
            missing = [i for i in range(len(items)) if not state.item_refs or state.item_refs[i] is None]
            run = executor.start_map(
                call,
                missing,
                [items[i] for i in missing],
                [broadcast] * len(missing),
                [seed] * len(missing),
                chunksize=node.chunksize,
            )
            threading.Thread(
                target=self._wait_map, args=(run, missing, state), name="cloudburst-stage-map", daemon=True
            ).start()
        self.settler.release_inputs(state)
        self.changed()

    def called(self, state: NodeState, future: Future[Any]) -> None:
        """A call's future is done: its result ref, or its failure."""
        exc = future.exception()
        if exc is not None:
            self.settler.fail(state, exc)
            return
        result: StageResult = future.result()
        state.result = result
        state.started, state.ended, state.worker = result.started, result.ended, result.worker
        state.seconds = result.ended - result.started
        state.items_ran = 1
        self.settler.done(state, result.ref, state.group.store, "ran", state.group)

    def mapped(self, state: NodeState, outcome: tuple[list[int], list[Any], dict[int, BaseException]]) -> None:
        """A map node's run is done: its items' refs, or the first item that failed."""
        missing, values, errors = outcome
        if errors:
            pos = min(errors)
            self.settler.fail(state, errors[pos], item=missing[pos])
            return
        results: dict[int, StageResult] = dict(zip(missing, values, strict=True))
        self.settler.map_done(state, results)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _caching(self, node: Node) -> bool:
        return self.settings.cache and self.cache is not None and node.stage.options.cache is not False

    def _key_items(self, state: NodeState, environment: str) -> None:
        items = self._items(state, self._arg_of)
        if not self._caching(state.node):
            return
        keyer, node = self.keyer, state.node
        broadcast = dict(node.broadcast)
        prints = [keyer.call(node, item, broadcast, f"{state.path}[{i}]", environment) for i, item in enumerate(items)]
        state.item_keys = [fingerprint.key() for fingerprint in prints]
        state.key = aggregate_key(state.item_keys)

    def _items(self, state: NodeState, arg_of: Callable[[Node], Any]) -> list[tuple[Any, ...]]:
        """The positional arguments of each item of a map node (a fanned node's parts, once known)."""
        node = state.node
        if isinstance(node.items, Node):
            parts = self.settler.parts_of(self.states[id(node.items)], state)
            return [(arg_of_part,) for arg_of_part in parts]
        return [tuple(substitute(item, arg_of)) for item in node.items or []]

    def _call_of(self, node: Node) -> StageCall:
        """One StageCall per stage and storage mode: the core pickles a function once per job, by identity."""
        elements = id(node) in self.graph.fanned
        key = (id(node.stage), elements)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = StageCall(node.stage.fn, node.stage.name, None, elements)
        return call

    def _digest_of(self, node: Node) -> str | None:
        ref = self.states[id(node)].ref
        return None if ref is None else ref.digest

    def _arg_of(self, node: Node) -> ArgRef:
        ref = self.states[id(node)].ref
        assert ref is not None, "a node is keyed only once its inputs are done"
        return ArgRef(ref)

    def _forward(self, node: Node, group: Group) -> ArgRef:
        """An input's ref for a call in ``group``'s job, its blobs copied there first when they live elsewhere."""
        state = self.states[id(node)]
        assert state.ref is not None and state.store is not None
        if state.ref.blobs() and not (state.group is group and state.store is group.store):
            copy_blobs(state.ref, state.store, group.store)
        return ArgRef(state.ref)

    def _post_when_done(self, future: Future[Any], kind: str, state: NodeState) -> None:
        node_id = id(state.node)
        events = self.events

        def post(done: Future[Any]) -> None:
            if kind in ("looked", "items-looked"):
                exc = done.exception()
                events.put(("failed", node_id, exc) if exc is not None else (kind, node_id, done.result()))
            else:
                events.put((kind, node_id, done))

        future.add_done_callback(post)

    def _wait_map(self, run: Any, missing: list[int], state: NodeState) -> None:
        with run.cond:
            while run.done < len(run) and not run.cancelled:
                run.cond.wait(1.0)
            values, errors = list(run.values), dict(run.errors)
        self.events.put(("mapped", id(state.node), (missing, values, errors)))

    def close_idle_groups(self) -> None:
        """Close each opened shape with nothing left to run, off this thread (a close waits for workers)."""
        for group in self.groups:
            if group.opened and group.remaining == 0 and group.holding:
                self.settler.move_to_cache(group)
            if group.closable():
                group.closing = True
                closer = threading.Thread(target=group.close, name="cloudburst-stage-close", daemon=True)
                closer.start()
                self._closers.append(closer)

    def changed(self) -> None:
        """Tell the progress display that a node's state changed."""
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change()


def _look_all(cache: StageCache, stage: str, keys: list[str]) -> list[ValueRef | None]:
    with ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="cloudburst-stage-items") as pool:
        return list(pool.map(lambda key: cache.lookup(stage, key), keys))
