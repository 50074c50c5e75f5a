"""How a node of a run settles: done (ran or cached), failed, or skipped; and what follows from it.

Each settled node: counts down its dependents' unfinished inputs (a dependent at zero becomes ready),
records its result in the cache when it ran (the client writes entries; workers never do), reads its
value when ``compute`` returns it, and tells its shape whether it still holds data a later call needs.
A failure never stops independent branches: dependents are skipped, everything else goes on.
"""

from __future__ import annotations

import hashlib
import traceback
from typing import TYPE_CHECKING, Any

from ..backends.base import Store
from ..errors import StageError
from ..log import warn
from ..protocol.serialize import Unpacker
from .groups import Group, reader
from .refs import ArgRef, StageResult, ValueRef
from .remote import copy_blobs, load_value

if TYPE_CHECKING:
    from .scheduler import NodeState, Scheduler

__all__ = ["Settler", "map_ref"]


def map_ref(refs: list[ValueRef]) -> ValueRef:
    """The ref of a whole map node: its items' refs as parts; its digest, their digests in order."""
    hasher = hashlib.sha256(b"cbmapvalue1")
    for ref in refs:
        hasher.update(ref.digest.encode())
    return ValueRef(hasher.hexdigest(), None, tuple(refs), "list", len(refs), sum(ref.nbytes for ref in refs))


class Settler:
    """The scheduler's settling steps (same thread, same state)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.run = scheduler
        self.values: dict[int, Any] = {}
        self.outputs = {id(node) for node in scheduler.outputs}
        self._cache_reader: Unpacker | None = None

    # -- settling --------------------------------------------------------------------------------------------

    def done(self, state: NodeState, ref: ValueRef, store: Store, status: str, home: Group | None = None) -> None:
        """``state`` has its result, in ``store`` (``home``'s job store, or the cache's when ``home`` is None):
        keep where it lives, record it, read it if it is an output; twins waiting on its key get it too."""
        run = self.run
        state.ref, state.store, state.status, state.home = ref, store, status, home
        if status == "ran" and state.key is not None and run.cache is not None:
            run.later(run.cache.record, state.node.stage.name, state.key, ref, store)
        if id(state.node) in self.outputs and id(state.node) not in self.values:
            self.values[id(state.node)] = load_value(ref, self._unpacker_for(state, store))
        dependents = run.graph.dependents.get(id(state.node), [])
        state.needers = {id(dep) for dep in dependents if not run.states[id(dep)].settled}
        if state.needers and ref.blobs() and home is not None:
            home.holding.add(id(state.node))
        self._settle(state)
        twins, state.twins = state.twins, []
        for twin in twins:
            self.done(twin, ref, store, "cached", home)

    def map_done(self, state: NodeState, results: dict[int, StageResult]) -> None:
        """A map node's items are all known: ``results`` ran now, the others came from the cache."""
        run, cache = self.run, self.run.cache
        refs: list[ValueRef] = []
        ran = bool(results)
        for i in range(len(state.item_refs) or len(results)):
            result = results.get(i)
            if result is not None:
                refs.append(result.ref)
                if cache is not None and state.item_keys:
                    run.later(cache.record, state.node.stage.name, state.item_keys[i], result.ref, state.group.store)
                continue
            cached = state.item_refs[i]
            assert cached is not None and cache is not None
            if ran and cached.blobs():  # one store per node: cached items join the ones that ran
                copy_blobs(cached, cache.store, state.group.store)
            refs.append(cached)
        if results:
            timings = list(results.values())
            state.started = min(r.started for r in timings)
            state.ended = max(r.ended for r in timings)
            state.worker = timings[0].worker
            state.seconds = sum(r.ended - r.started for r in timings)
            state.items_ran = len(results)
        ref = map_ref(refs)
        if not ran and cache is not None and state.key is not None:  # every item hit: one read next time
            run.later(cache.record, state.node.stage.name, state.key, ref, cache.store)
        if ran:
            self.done(state, ref, state.group.store, "ran", state.group)
        else:
            self.done(state, ref, run.cache.store, "cached")  # type: ignore[union-attr]

    def fail(self, state: NodeState, exc: BaseException, item: int | None = None) -> None:
        """``state``'s call raised, or its worker died more often than its retries allow."""
        name = state.node.stage.name
        where = f" (item {item})" if item is not None else ""
        remote = getattr(exc, "remote_traceback", None) or "".join(traceback.format_exception(exc))
        error = StageError(
            f"stage {name}{where} failed: {type(exc).__name__}: {exc}",
            stage=name,
            call=state.path,
            remote_traceback=remote,
        )
        error.__cause__ = exc
        state.status, state.error = "failed", error
        self._settle(state)
        twins, state.twins = state.twins, []
        for twin in twins:  # the same call: it would fail the same way
            self.fail(twin, exc, item)

    def skip(self, state: NodeState, failed_input: NodeState) -> None:
        """An input of ``state`` failed (or was skipped): ``state`` cannot run."""
        root = failed_input.error
        root_stage = root.stage if isinstance(root, StageError) else failed_input.node.stage.name
        root_call = root.call if isinstance(root, StageError) else failed_input.path
        error = StageError(
            f"stage {state.node.stage.name} did not run: stage {root_stage} failed", stage=root_stage, call=root_call
        )
        error.__cause__ = root.__cause__ if isinstance(root, StageError) else root
        state.status, state.error = "skipped", error
        self._settle(state)

    def _settle(self, state: NodeState) -> None:
        run = self.run
        run.unsettled -= 1
        state.group.remaining -= 1
        self.release_inputs(state)
        for dependent in run.graph.dependents.get(id(state.node), []):
            dep_state = run.states[id(dependent)]
            dep_state.waiting -= 1
            if dep_state.waiting == 0 and dep_state.status == "waiting":
                run.ready_nodes.append(dep_state)
        run.close_idle_groups()
        run.changed()

    def usable(self, state: NodeState, ref: ValueRef) -> bool:
        """Whether a cache hit can stand for ``state``: an output's value is read now, and one whose stored
        bytes fail their check (or are gone) makes the hit a miss, with a warning, so the call runs again."""
        if id(state.node) not in self.outputs:
            return True
        cache = self.run.cache
        assert cache is not None
        try:
            self.values[id(state.node)] = load_value(ref, self._unpacker_for(state, cache.store))
        except Exception as exc:
            warn(
                f"cloudburst: the cached value of stage {state.node.stage.name} in {cache.where} could not be "
                f"read ({type(exc).__name__}: {exc}); the call runs again"
            )
            return False
        return True

    # -- what a settled node still holds ---------------------------------------------------------------------

    def release_inputs(self, state: NodeState) -> None:
        """``state`` no longer needs its inputs' stored data (it was sent, or will never run)."""
        run = self.run
        for node in state.node.inputs():
            producer = run.states[id(node)]
            producer.needers.discard(id(state.node))
            if not producer.needers and producer.home is not None:
                producer.home.holding.discard(id(node))

    def move_to_cache(self, group: Group) -> None:
        """Before ``group`` closes, point the results it still holds at their cache entries, where they exist."""
        run, cache = self.run, self.run.cache
        if cache is None:
            return
        run.do_later_now()
        cache.flush()
        for node_id in list(group.holding):
            state = run.states[node_id]
            ref = state.ref
            if state.key is None or ref is None:
                continue
            if all(cache.store.exists(blob.key) for blob in ref.blobs()):
                state.store, state.home = cache.store, None
                group.holding.discard(node_id)

    def parts_of(self, producer: NodeState, consumer: NodeState) -> list[ArgRef]:
        """The elements of ``producer``'s list, one ArgRef each, as items of a map node."""
        ref = producer.ref
        assert ref is not None
        if ref.parts is None:
            raise TypeError(
                f"stage {consumer.node.stage.name}.map() fans out over the result of {producer.node.stage.name}, "
                f"which returned {ref.kind or 'a value that is not a list or tuple'}"
            )
        return [ArgRef(part) for part in ref.parts]

    def _unpacker_for(self, state: NodeState, store: Store) -> Unpacker:
        cache = self.run.cache
        if cache is not None and store is cache.store:
            if self._cache_reader is None:
                self._cache_reader = reader(cache.store)
            return self._cache_reader
        return state.group.unpacker
