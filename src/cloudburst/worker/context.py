"""The running task's worker, as code inside a call sees it: the job's store, the ``Unpacker`` and ``Packer``
that read and write it, and the worker's id.

``TaskRunner`` sets it on the thread that runs a task's calls and clears it after, so it is right on every
backend: a worker process (local, Fargate), a worker thread of the client (inline), or a thread of an
emulated task. Stage calls (``cloudburst.stages.remote.StageCall``) read their inputs and store their
results through it; outside a task it is ``None``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..backends.base import Store
from ..protocol.serialize import Packer, Unpacker

__all__ = ["WorkerContext", "current", "set_current"]


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a call running on a worker may use of it: its job store, and the worker's packer and unpacker."""

    store: Store
    unpacker: Unpacker
    packer: Packer
    worker_id: str


class _Local(threading.local):
    context: WorkerContext | None = None


_local = _Local()


def current() -> WorkerContext | None:
    """The context of the task running on this thread, or None outside a task."""
    return _local.context


def set_current(context: WorkerContext | None) -> None:
    """Set by the worker around a task's calls (None after them)."""
    _local.context = context
