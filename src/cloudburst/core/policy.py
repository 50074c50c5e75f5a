"""What a session does differently when its client may leave: the dispatch policy.

An attached session (the default) measures item time with small probes, keeps a short
backlog in the queue, reads its results, fails tasks the queue gave up on, and tells the
workers to stop when it closes. A detached session (``cloudburst.detached`` supplies its
policy) queues everything at once, in chunks cut without measuring, and leaves the results
in their queue for :func:`cloudburst.attach`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATTACHED", "DispatchPolicy"]


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """How a session dispatches and what it watches."""

    #: tasks sent and not finished, at most (None: two per slot and two more, enough to keep workers busy)
    backlog: int | None = None
    #: size chunks from measured item time, probing one task per slot first; False: cut the work into
    #: four tasks per slot with no measurement
    measure: bool = True
    #: read the result queue (False: results wait there for a later client)
    collect: bool = True
    #: fail tasks the queue moved to its dead-letter queue
    dead_letters: bool = True
    #: write the stop flag when the session closes, so workers that miss the stop request retire
    stop_flag: bool = True


ATTACHED = DispatchPolicy()
