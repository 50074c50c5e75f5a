"""The core's small parts on their own: the lifecycle, the retry helper, and the backend's word on
which errors are transient (the core holds no cloud's error codes; it asks the backend)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

import pytest

import cloudburst
from cloudburst import detached
from cloudburst.backends import register
from cloudburst.backends.aws.fargate import FargateBackend
from cloudburst.backends.base import Backend, JobResources
from cloudburst.backends.local import LocalBackend
from cloudburst.core.lifecycle import Lifecycle, State
from cloudburst.core.retry import MAX_OUTAGE_ROUNDS, Outage
from cloudburst.errors import BrokenExecutorError, CloudError, ExecutorShutdownError

# ---------------------------------------------------------------------------- lifecycle


def test_lifecycle_runs_shuts_down_and_closes() -> None:
    life = Lifecycle()
    life.check_accepting()
    assert life.working and not life.closed
    life.shut_down()
    assert life.state is State.SHUTTING_DOWN and life.working
    with pytest.raises(ExecutorShutdownError):
        life.check_accepting()
    assert life.close() and life.closed and not life.working
    assert not life.close()  # closing twice is a no-op


def test_a_broken_lifecycle_keeps_its_first_cause_after_closing() -> None:
    life = Lifecycle()
    life.shut_down()
    assert life.break_(RuntimeError("the first\nsecond line"))
    assert not life.break_(ValueError("a later one"))
    assert life.state is State.BROKEN and not life.working
    life.close()
    with pytest.raises(BrokenExecutorError, match=r"\(RuntimeError: the first\)") as raised:
        life.check_accepting()
    assert isinstance(raised.value.cause, RuntimeError)


# ---------------------------------------------------------------------------- retry helper


class Hiccup(Exception):
    """An error only the test's backend calls transient."""


def test_outage_backs_off_then_gives_up() -> None:
    naps: list[float] = []
    outage = Outage(lambda exc: isinstance(exc, Hiccup), sleep=naps.append)
    assert all(outage.wait_out(Hiccup(), "testing") for _ in range(MAX_OUTAGE_ROUNDS - 1))
    assert naps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert not outage.wait_out(Hiccup(), "testing")
    assert outage.failures == 0  # a loop that goes on after giving up starts counting again
    assert not outage.wait_out(ValueError(), "testing") and naps[-1] == 30.0  # not transient: no wait


def test_outage_call_retries_through_transient_errors_and_raises_the_rest() -> None:
    attempts = iter([Hiccup(), Hiccup(), "sent"])

    def flaky() -> str:
        got = next(attempts)
        if isinstance(got, Exception):
            raise got
        return got

    outage = Outage(lambda exc: isinstance(exc, Hiccup), sleep=lambda seconds: None)
    assert outage.call(flaky, "sending") == "sent" and outage.failures == 0
    with pytest.raises(ValueError):
        outage.call(lambda: int("x"), "parsing")
    assert outage.call(lambda: 1, "never", stop=lambda: True) is None


# ---------------------------------------------------------------------------- which errors are transient

TRANSIENT: list[tuple[type[Backend], BaseException, bool]] = [
    (Backend, ConnectionResetError("reset"), True),
    (Backend, TimeoutError("slow"), True),
    (Backend, CloudError("throttled", code="Throttling"), False),  # the core knows no cloud's codes
    (Backend, ValueError("a bug"), False),
    (FargateBackend, CloudError("throttled", code="ThrottlingException"), True),
    (FargateBackend, CloudError("S3", code="SlowDown"), True),
    (FargateBackend, CloudError("5xx", code="ServiceUnavailable"), True),
    (FargateBackend, CloudError("dropped connection"), True),
    (FargateBackend, CloudError("denied", code="AccessDenied"), False),
    (FargateBackend, CloudError("gone", code="AWS.SimpleQueueService.NonExistentQueue"), False),
    (FargateBackend, ConnectionError("reset"), True),
    (FargateBackend, KeyError("a bug"), False),
]


@pytest.mark.parametrize(("backend", "exc", "transient"), TRANSIENT, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_the_backend_says_which_errors_are_transient(
    backend: type[Backend], exc: BaseException, transient: bool
) -> None:
    assert backend.is_transient(exc) is transient


GONE: list[tuple[type[Backend], BaseException, bool]] = [
    (Backend, CloudError("gone", code="QueueDoesNotExist"), False),
    (FargateBackend, CloudError("gone", code="AWS.SimpleQueueService.NonExistentQueue"), True),
    (FargateBackend, CloudError("gone", code="NoSuchBucket"), True),
    (FargateBackend, CloudError("throttled", code="Throttling"), False),
    (FargateBackend, FileNotFoundError("blobs/x"), False),
]


@pytest.mark.parametrize(("backend", "exc", "gone"), GONE, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_the_backend_says_when_the_job_is_gone(backend: type[Backend], exc: BaseException, gone: bool) -> None:
    assert backend.job_is_gone(exc) is gone


# ---------------------------------------------------------------------------- the core asks the backend


class HiccupBackend(LocalBackend):
    """The local backend, whose task queue refuses its first sends with an error of its own kind."""

    name: ClassVar[str] = "hiccup"
    transient: ClassVar[bool] = True
    refusals: ClassVar[int] = 2

    @classmethod
    def import_path(cls) -> str:
        return LocalBackend.import_path()  # workers are plain local workers

    @classmethod
    def is_transient(cls, exc: BaseException) -> bool:
        return (cls.transient and isinstance(exc, Hiccup)) or super().is_transient(exc)

    def open_job(self, job_id: str, key: bytes, worker_env: Mapping[str, str]) -> JobResources:
        resources = super().open_job(job_id, key, worker_env)
        send, refusals = resources.tasks.send_batch, iter(range(self.refusals))

        def refuse_first(bodies: Sequence[bytes]) -> None:
            if next(refusals, None) is not None:
                raise Hiccup("the task queue hiccuped")
            send(bodies)

        resources.tasks.send_batch = refuse_first  # type: ignore[method-assign]
        return resources


@pytest.fixture
def hiccup() -> Iterator[type[HiccupBackend]]:
    register("hiccup", f"{__name__}:HiccupBackend")
    yield HiccupBackend
    HiccupBackend.transient, HiccupBackend.refusals = True, 2


def test_an_error_the_backend_calls_transient_is_waited_out(
    hiccup: type[HiccupBackend], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudburst"), cloudburst.Executor(1, backend="hiccup") as ex:
        assert ex.submit(abs, -3).result(timeout=60) == 3
    assert "sending tasks failed (the task queue hiccuped); trying again" in caplog.text
    assert not [r for r in caplog.records if r.getMessage().startswith("cloudburst: ")], "the handler adds that"


def test_an_error_the_backend_does_not_call_transient_fails_the_items(hiccup: type[HiccupBackend]) -> None:
    hiccup.transient, hiccup.refusals = False, 1
    with cloudburst.Executor(1, backend="hiccup") as ex:
        with pytest.raises(Hiccup):
            ex.submit(abs, -3).result(timeout=60)
        assert ex.submit(abs, -4).result(timeout=60) == 4  # the next send went through: the job goes on


# ---------------------------------------------------------------------------- detached mode's policy


def test_only_a_detached_backend_gets_the_detached_policy() -> None:
    with cloudburst.Executor(1) as ex:
        assert detached.policy_for(ex._job.backend) is not detached.DETACHED
        assert not detached.runs_detached(ex._job)
