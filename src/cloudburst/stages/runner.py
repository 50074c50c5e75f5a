"""``cloudburst.compute``: run what some nodes need and return their values.

Steps: check the request; build the graph; open the cache (no job yet: a fully cached run opens none);
run the scheduler; write the run's report (what ran and why); hand back the values, or raise the first
failure as a ``StageError`` once every independent branch has finished.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Literal

from ..config.options import check_known
from ..core.progress import Progress, wanted
from ..errors import ConfigurationError, StageError
from .cache import StageCache, open_cache
from .graph import Graph
from .groups import PORTABLE, check_stage_options, option_names
from .node import Node
from .report import RunReport, StageRecord, explain_changes, load_run, progress_text, save_run, set_last_run
from .scheduler import NodeState, RunSettings, Scheduler

__all__ = ["compute"]


def compute(
    *nodes: Node,
    name: str | None = None,
    backend: str = "local",
    seed: int | None = None,
    cache: bool = True,
    errors: Literal["raise", "return"] = "raise",
    explain: bool = False,
    report: bool = False,
    progress: bool | Literal["auto"] = "auto",
    workers: int | None = None,
    **options: Any,
) -> Any:
    """Run the stage calls that ``nodes`` need and return their values (one node: its value; several: a tuple).

    Calls whose cache key is unchanged are not run again (``cache=False``: no lookups, no entries). Stages
    of different shapes run on workers of those shapes; ``options`` (cpu, memory, retries, image, and the
    backend's own) apply to every stage that does not set its own. ``errors="return"`` puts the exception in
    a failed node's place instead of raising; ``report=True`` returns ``(values, RunReport)``;
    ``explain=True`` prints, for each call, whether it was cached or ran, and what changed.
    """
    _check(nodes, backend, seed, errors, options)
    graph = Graph.build(list(nodes))
    check_stage_options(graph.nodes, backend)
    name = name or "+".join(dict.fromkeys(node.stage.name for node in nodes))
    settings = RunSettings(backend, seed, bool(cache), workers, dict(options))
    stage_cache = open_cache(backend, options) if cache else None
    scheduler = Scheduler(graph, list(nodes), settings, stage_cache)
    started = time.time()
    bar = _progress_bar(scheduler, progress)
    try:
        scheduler.run()
    finally:
        bar.close()
        if stage_cache is not None:
            stage_cache.close()
    run_report = _report(scheduler, name, started)
    explain_changes(run_report, load_run(name))
    save_run(run_report)
    set_last_run(run_report)
    if explain:
        print(run_report.explain())
    values = _values(scheduler, list(nodes), errors)
    result = values[0] if len(values) == 1 else tuple(values)
    return (result, run_report) if report else result


def _check(nodes: tuple[Node, ...], backend: str, seed: object, errors: str, options: dict[str, Any]) -> None:
    if not nodes:
        raise TypeError("compute() needs at least one node: cloudburst.compute(my_stage(...))")
    for node in nodes:
        if not isinstance(node, Node):
            raise TypeError(
                f"compute() takes nodes, the values that calling a stage returns; got {type(node).__name__}"
            )
    if errors not in ("raise", "return"):
        raise ConfigurationError(f'errors={errors!r} must be "raise" or "return"')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigurationError(f"seed={seed!r} must be a whole number, or None")
    check_known(sorted(set(options) - PORTABLE), option_names(backend), what=f"compute(backend={backend!r})")


def _progress_bar(scheduler: Scheduler, progress: bool | Literal["auto"]) -> Progress:
    states = scheduler.states
    total = len(states)

    def postfix() -> str:
        counts = Counter(state.status for state in states.values())
        return progress_text(
            total - scheduler.unsettled,
            total,
            counts["sent"],
            counts["cached"],
            counts["failed"],
            scheduler.groups.cost(),
        )

    bar = Progress(total, enabled=wanted(progress), description="stages", postfix=postfix)
    seen = [0]

    def changed() -> None:
        settled = total - scheduler.unsettled
        if settled > seen[0]:
            bar.advance(settled - seen[0])
            seen[0] = settled

    scheduler.on_change = changed
    return bar


def _record(state: NodeState, hourly: float) -> StageRecord:
    node = state.node
    shape = {k: v for k, v in state.group.options.items() if v is not None}
    why: list[str] = []
    if node.kind == "map" and state.status == "ran":
        why.append(f"{state.items_ran} of {len(state.item_refs) or state.items_ran} items ran")
    return StageRecord(
        name=node.stage.name,
        call=state.path,
        status=state.status if state.settled else "cancelled",  # type: ignore[arg-type]
        key=state.key,
        started=state.started,
        ended=state.ended,
        worker=state.worker,
        shape=shape,
        seconds=state.seconds,
        cost=state.seconds * hourly / 3600 if state.status == "ran" else None,
        nbytes=state.ref.nbytes if state.ref is not None else None,
        why=why,
        error=None if state.error is None else str(state.error),
        fingerprint=state.fingerprint.to_json() if state.fingerprint is not None else None,
    )


def _report(scheduler: Scheduler, name: str, started: float) -> RunReport:
    records = [_record(state, state.group.hourly) for state in scheduler.states.values()]
    return RunReport(
        name=name,
        backend=scheduler.settings.backend,
        started=started,
        ended=time.time(),
        stages=records,
        cost=scheduler.groups.cost(),
        job_ids=scheduler.groups.job_ids(),
    )


def _values(scheduler: Scheduler, outputs: list[Node], errors: str) -> list[Any]:
    failures = [state.error for state in scheduler.states.values() if state.status == "failed"]
    stage_failures = [error for error in failures if isinstance(error, StageError)]
    if stage_failures and errors == "raise":
        first = stage_failures[0]
        first.failures = stage_failures
        raise first
    values: list[Any] = []
    for node in outputs:
        state = scheduler.states[id(node)]
        if state.status == "failed" and state.error is not None:
            values.append(state.error.__cause__ or state.error)
        elif state.status == "skipped":
            values.append(state.error)
        else:
            values.append(scheduler.settler.values[id(node)])
    return values


def cache_for(backend: str, options: dict[str, Any]) -> StageCache:
    """The cache a compute with these options uses (for tools and tests)."""
    return open_cache(backend, options)
