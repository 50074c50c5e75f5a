"""Where a Fargate worker finds its job: the Fargate backend's part of the worker's wire environment.

::

    FargateBackend._open ── FargateWire(...).to_args() ─► WorkerEnv.backend_args ─► RunTask overrides
        ─► (container) from_environ ─► FargateWire.from_args(env.backend_args) ─► connect_worker

The wire environment itself (``protocol.workerenv``) carries only what the worker loop reads; what a backend's
own worker side needs travels in its ``backend_args``, written and read only here for Fargate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ...protocol.workerenv import WireEnvironmentError, variable

__all__ = ["FargateWire"]


@dataclass(frozen=True)
class FargateWire:
    """A Fargate job's resources as its workers see them; ``backend_args`` of every worker of the job."""

    region: str  # the region of the job's queues, bucket and key
    bucket: str  # the bucket of the job's store
    prefix: str  # the job's key prefix in the bucket
    task_queue: str  # the task queue's URL
    result_queue: str  # the result queue's URL
    dead_letter_queue: str = ""  # the dead-letter queue's URL
    job_key_parameter: str = ""  # the encrypted SSM parameter holding the job key (not put in RunTask's overrides)

    def to_args(self) -> dict[str, str]:
        """The fields as ``backend_args`` (every one, as strings)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> FargateWire:
        """Read ``backend_args`` back; raises :class:`WireEnvironmentError` naming a missing or unknown key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in args]
        unknown = sorted(set(args) - set(fields))
        if missing or unknown:
            problem = f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(unknown)}"
            raise WireEnvironmentError(
                f"{variable('backend_args')} {problem}: a Fargate worker needs its job's region, bucket, prefix and "
                "queues there; start Fargate workers through the fargate backend (its launcher writes them)"
            )
        return cls(**args)
