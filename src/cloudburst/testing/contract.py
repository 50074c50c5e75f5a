"""``BackendContract``: the whole suite in one class, for a backend's test module to subclass."""

from __future__ import annotations

from .behaviour import BehaviourContract
from .failures import FailureContract
from .fixtures import ContractFixtures, OpenJob, open_job, wait_until
from .parts import LauncherContract, QueueContract, StoreContract

__all__ = [
    "BackendContract",
    "BehaviourContract",
    "ContractFixtures",
    "FailureContract",
    "LauncherContract",
    "OpenJob",
    "QueueContract",
    "StoreContract",
    "open_job",
    "wait_until",
]


class BackendContract(StoreContract, QueueContract, LauncherContract, BehaviourContract, FailureContract):
    """Every part of the contract, then the executor through the backend. Subclass it and supply a
    class-scoped ``backend`` fixture returning ``(name, Executor options)``; set ``isolated_workers``,
    ``relays_output`` or ``fresh_executors`` to False for what the backend cannot do, and override
    ``leftover_check`` to assert that a job leaves nothing behind."""
