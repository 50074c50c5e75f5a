"""cloudburst: run parallel Python on this machine, or burst it to the cloud with one changed line.

import cloudburst as cb

results = cb.map(simulate, range(10_000), seed=42)          # ordered list, progress bar
with cb.Executor(workers=8) as ex:                          # a concurrent.futures.Executor
    futures = [ex.submit(simulate, i) for i in range(100)]
"""

from __future__ import annotations

from . import errors
from .aws import doctor, setup, teardown
from .backends import available as available_backends
from .detached import DetachedJob, attach, jobs
from .errors import (
    BrokenExecutorError,
    CloudburstError,
    CloudError,
    ConfigurationError,
    CostLimitExceeded,
    ExecutorShutdownError,
    ForgedMessagesError,
    NotSetUpError,
    PayloadAuthenticationError,
    PicklingError,
    RemoteError,
    SerializationError,
    StageError,
    StageHashError,
    TaskExitError,
    UnknownParameterError,
    UnpicklingError,
    WorkerDiedError,
)
from .estimate import Estimate, estimate
from .executor import Executor, map, submit_job
from .joblib_hook import enable as _enable_joblib
from .pool import Pool
from .seeds import current_item, rng
from .stages import Node, RunReport, Stage, compute, last_run, stage
from .streaming import imap
from .version import __version__

__all__ = [
    "BrokenExecutorError",
    "CloudError",
    "CloudburstError",
    "ConfigurationError",
    "CostLimitExceeded",
    "DetachedJob",
    "Estimate",
    "Executor",
    "ExecutorShutdownError",
    "ForgedMessagesError",
    "Node",
    "NotSetUpError",
    "PayloadAuthenticationError",
    "PicklingError",
    "Pool",
    "RemoteError",
    "RunReport",
    "SerializationError",
    "Stage",
    "StageError",
    "StageHashError",
    "TaskExitError",
    "UnknownParameterError",
    "UnpicklingError",
    "WorkerDiedError",
    "__version__",
    "attach",
    "available_backends",
    "compute",
    "current_item",
    "doctor",
    "errors",
    "estimate",
    "imap",
    "jobs",
    "last_run",
    "map",
    "rng",
    "setup",
    "stage",
    "submit_job",
    "teardown",
]

_enable_joblib()  # joblib.parallel_config(backend="cloudburst"), without importing joblib here
