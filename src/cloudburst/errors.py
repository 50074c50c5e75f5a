"""Every error cloudburst raises for its own reasons.

An exception raised by *your* function comes back as itself (same type, remote
traceback attached). Everything below is about the machinery::

    CloudburstError
     ├── ConfigurationError (ValueError)      a parameter or value is wrong; nothing was started
     │    ├── UnknownParameterError (TypeError) a parameter name is not known; lists the valid ones
     │    ├── NotSetUpError                    a cloud backend was asked for before `cloudburst setup`
     │    └── StageHashError                   a stage's global, closure variable or argument cannot be hashed
     ├── SerializationError                   an object could not cross the process boundary
     │    ├── PicklingError                    ... could not be pickled (function, argument, result)
     │    └── UnpicklingError                  ... could not be unpickled on the other side
     ├── PayloadAuthenticationError           a message failed its HMAC check and was not unpickled
     │    └── ForgedMessagesError              messages on a queue kept failing their check: the job was stopped
     ├── WorkerDiedError                      the worker running the task died, more than `retries` times
     ├── TaskExitError                        the task called sys.exit() / raised SystemExit
     ├── RemoteError                          the task raised an exception that could not be sent back
     ├── ExecutorShutdownError (RuntimeError) work was submitted after shutdown
     ├── BrokenExecutorError (BrokenExecutor) the executor can no longer run work; ``cause`` says why
     ├── CostLimitExceeded                    the job reached max_cost_per_job; finished results are kept
     ├── StageError                           a stage of a pipeline failed, or one it needs did (``stage``, ``call``)
     └── CloudError                           a cloud API refused a request, after retries (code, operation)

Errors from libraries underneath (pickle, OS, boto3) are translated at the
boundary with ``raise ... from exc`` so the original stays visible.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

__all__ = [
    "BrokenExecutorError",
    "CloudError",
    "CloudburstError",
    "ConfigurationError",
    "CostLimitExceeded",
    "ExecutorShutdownError",
    "ForgedMessagesError",
    "NotSetUpError",
    "PayloadAuthenticationError",
    "PicklingError",
    "RemoteError",
    "SerializationError",
    "StageError",
    "StageHashError",
    "TaskExitError",
    "UnknownParameterError",
    "UnpicklingError",
    "WorkerDiedError",
]


class CloudburstError(Exception):
    """Base class of every error raised by cloudburst itself."""


class ConfigurationError(CloudburstError, ValueError):
    """A parameter has an invalid value. Raised before anything is started."""


class UnknownParameterError(ConfigurationError, TypeError):
    """A parameter name is not accepted; the message lists the valid names."""


class StageHashError(ConfigurationError):
    """A value a stage reads (global, closure variable, argument) cannot be hashed for its cache key.

    Raised before anything runs; the message names the value and the way out.
    """


class StageError(CloudburstError):
    """A stage call failed after its retries, or could not run because a stage it needs failed.

    ``stage`` names the stage that failed (not the dependent), ``call`` its call path in the pipeline,
    ``remote_traceback`` the worker's traceback when it raised, and ``failures`` (on the error that
    ``compute`` raises) every stage call of the run that failed. ``__cause__`` is the original exception.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        call: str,
        remote_traceback: str | None = None,
        failures: list[StageError] | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.call = call
        self.remote_traceback = remote_traceback
        self.failures: list[StageError] = failures if failures is not None else []

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_stage_error, (str(self), self.stage, self.call, self.remote_traceback))


def _rebuild_stage_error(message: str, stage: str, call: str, remote_traceback: str | None) -> StageError:
    return StageError(message, stage=stage, call=call, remote_traceback=remote_traceback)


class SerializationError(CloudburstError):
    """An object could not be moved between the client and a worker."""


class PicklingError(SerializationError):
    """The function, an argument or a result could not be pickled."""


class UnpicklingError(SerializationError):
    """The function, an argument or a result could not be unpickled."""


class PayloadAuthenticationError(CloudburstError):
    """A task or result message failed its authenticity check and was discarded unread."""


class ForgedMessagesError(PayloadAuthenticationError):
    """Messages on one of the job's queues kept failing their authenticity check (forged, replayed from
    another job, tampered with): the job was stopped, its workers too; finished results are kept.

    ``queue`` names the queue ("tasks" or "results"), ``count`` how many such messages arrived.
    """

    def __init__(self, message: str, *, queue: str = "", count: int = 0) -> None:
        super().__init__(message)
        self.queue = queue
        self.count = count

    def __reduce__(self) -> tuple[object, ...]:
        return (ForgedMessagesError, (str(self),), {"queue": self.queue, "count": self.count})


class WorkerDiedError(CloudburstError):
    """The worker process running a task died, and retries are exhausted.

    ``exit_code`` is the last worker's exit status (negative: killed by that
    signal, as in :mod:`subprocess`); ``attempts`` counts the deliveries.
    """

    def __init__(self, message: str, *, exit_code: int | None = None, reason: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_worker_died,
            (str(self), self.exit_code, self.reason, self.attempts),
        )


def _rebuild_worker_died(message: str, exit_code: int | None, reason: str, attempts: int) -> WorkerDiedError:
    return WorkerDiedError(message, exit_code=exit_code, reason=reason, attempts=attempts)


class TaskExitError(CloudburstError):
    """The task raised SystemExit (for example by calling ``sys.exit()``).

    It is reported rather than re-raised, so a task cannot end the client.
    """

    def __init__(self, message: str, code: object = None) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (TaskExitError, (str(self), self.code))


class RemoteError(CloudburstError):
    """The task raised an exception that could not be sent back as itself.

    ``type_name`` is the original type's qualified name and ``remote_traceback``
    its formatted traceback.
    """

    def __init__(self, message: str, *, type_name: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_remote, (str(self), self.type_name, self.remote_traceback))

    def __str__(self) -> str:
        base = super().__str__()
        if self.remote_traceback:
            return f"{base}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return base


def _rebuild_remote(message: str, type_name: str, remote_traceback: str) -> RemoteError:
    return RemoteError(message, type_name=type_name, remote_traceback=remote_traceback)


class ExecutorShutdownError(CloudburstError, RuntimeError):
    """Work was submitted to an executor that has been shut down."""


class BrokenExecutorError(CloudburstError, BrokenExecutor):
    """The executor can no longer run work, and says why: its cost limit was reached, its workers
    keep failing before they run anything, or the cloud stopped answering.

    Raised by every ``submit`` and ``map`` after that, as ``ProcessPoolExecutor`` raises
    ``BrokenProcessPool``; ``cause`` (also ``__cause__``) is the error that broke it, which the work
    pending at that moment failed with.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause

    def __reduce__(self) -> tuple[object, ...]:
        return (BrokenExecutorError, (str(self), self.cause))


class CostLimitExceeded(CloudburstError):
    """The job's cost reached ``max_cost_per_job``: its workers were stopped and pending work cancelled.

    ``cost`` is the cost when it stopped, ``limit`` the limit. From :func:`cloudburst.map`,
    ``results`` maps the index of every item that finished to its value.
    """

    def __init__(self, message: str, *, cost: float = 0.0, limit: float = 0.0) -> None:
        super().__init__(message)
        self.cost = cost
        self.limit = limit
        self.results: dict[int, object] = {}

    def __reduce__(self) -> tuple[object, ...]:
        return (CostLimitExceeded, (str(self),), {"cost": self.cost, "limit": self.limit, "results": self.results})


class NotSetUpError(ConfigurationError):
    """A cloud backend was asked for before ``cloudburst setup`` made its resources."""


class CloudError(CloudburstError):
    """A cloud provider's API refused a request (after retries). ``code`` is the provider's error code."""

    def __init__(self, message: str, *, service: str = "", operation: str = "", code: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.operation = operation
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_cloud, (str(self), self.service, self.operation, self.code))


def _rebuild_cloud(message: str, service: str, operation: str, code: str) -> CloudError:
    return CloudError(message, service=service, operation=operation, code=code)
