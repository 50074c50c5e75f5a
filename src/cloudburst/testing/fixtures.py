"""The fixtures the contract suite builds on the one a backend's test class supplies (``backend``)."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

import cloudburst
from cloudburst.backends import get_backend
from cloudburst.backends.base import Backend, JobResources
from cloudburst.config.options import ExecutorOptions
from cloudburst.protocol.workerenv import WorkerEnv

from .tasks import mark_client

mark_client()  # this module is imported by the suite, in the client, never by a worker

#: Executor options the suite passes on as themselves; the rest are the backend's own
_CORE = frozenset({"workers", "cpu", "memory", "idle_timeout", "env"})


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Whether ``predicate`` became true before ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class OpenJob:
    """One job opened on a backend directly, as the core opens it, for the Store, Queue and Launcher tests."""

    backend: Backend
    resources: JobResources
    job_id: str

    def close(self) -> None:
        """Stop its workers and delete what it made."""
        self.backend.close_job(self.resources)


def open_job(name: str, options: Mapping[str, Any], **wire: Any) -> OpenJob:
    """Open a job on backend ``name`` with Executor ``options``; ``wire`` sets fields of the workers'
    ``WorkerEnv`` (``idle_timeout=1``, say)."""
    cls = get_backend(name)
    defaults = cls.defaults()

    def pick(key: str, fallback: object = None) -> object:
        return options.get(key, defaults.get(key, fallback))

    backend = cls(
        ExecutorOptions.from_user(
            workers=pick("workers", 1),
            backend=name,
            cpu=pick("cpu", 1),
            memory=pick("memory"),
            retries=2,
            seed=None,
            progress=False,
            idle_timeout=pick("idle_timeout"),
            env=options.get("env"),
            backend_options={k: v for k, v in options.items() if k not in _CORE},
        )
    )
    job_id = uuid.uuid4().hex
    key = secrets.token_bytes(32)
    env = WorkerEnv(
        job_id=job_id,
        backend=backend.import_path(),
        job_key=key.hex(),
        lease_seconds=backend.lease_seconds,
        control_period=backend.control_period,
        user_env=dict(backend.options.env),
    ).replace(**wire)
    resources = backend.open_job(job_id, key, env)
    return OpenJob(backend, resources, job_id)


class ContractFixtures:
    """Fixtures and capability flags shared by the parts of the suite."""

    #: workers are processes of their own: a call can kill one, and objects load there afresh
    isolated_workers: ClassVar[bool] = True
    #: what a call prints comes back to the client tagged ``[item N]``
    relays_output: ClassVar[bool] = True
    #: tests may make executors of their own (off for a slow backend: the shared executor only)
    fresh_executors: ClassVar[bool] = True

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> tuple[str, dict[str, Any]]:
        """Supplied by the backend's test class: ``(registered name, Executor options)``."""
        raise NotImplementedError("a BackendContract subclass supplies a class-scoped `backend` fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_job(cls, backend: tuple[str, dict[str, Any]]) -> Iterator[OpenJob]:
        """One job opened on the backend directly; its store and queues are shared by a class's tests."""
        job = open_job(*backend)
        yield job
        job.close()

    @pytest.fixture(scope="class")
    @classmethod
    def contract_executor(cls, backend: tuple[str, dict[str, Any]]) -> Iterator[cloudburst.Executor]:
        """One executor with two workers, shared by a class's tests."""
        name, options = backend
        ex = cloudburst.Executor(backend=name, **{"workers": 2, **options})
        yield ex
        check = cls.leftover_check(ex)
        ex.terminate()
        check()

    @pytest.fixture
    def gate(self, tmp_path: Path) -> Iterator[str]:
        """A file that tasks started with ``tasks.wait_for`` wait for; opened at the end whatever happened, so
        that a failed case does not leave the shared workers busy."""
        path = tmp_path / "gate"
        yield str(path)
        path.touch()

    @pytest.fixture
    def make_executor(self, backend: tuple[str, dict[str, Any]]) -> Iterator[Callable[..., cloudburst.Executor]]:
        """Makes executors on the backend (options override the fixture's); terminates them afterwards."""
        self.needs_fresh_executors()
        name, options = backend
        made: list[cloudburst.Executor] = []

        def make(**kwargs: Any) -> cloudburst.Executor:
            ex = cloudburst.Executor(backend=name, **{**options, **kwargs})
            made.append(ex)
            return ex

        yield make
        for ex in made:
            check = self.leftover_check(ex)
            ex.shutdown(wait=False, cancel_futures=True)
            ex.terminate()
            check()

    @classmethod
    def leftover_check(cls, executor: cloudburst.Executor) -> Callable[[], None]:
        """Called with each executor the suite made, before it is terminated; what it returns is called
        after, to assert that the job left nothing behind (processes, files, cloud resources). A backend's
        test class overrides it to look; by default nothing is checked."""
        return lambda: None

    def needs_fresh_executors(self) -> None:
        """Skip a case that makes executors of its own on a backend that runs the shared executor only."""
        if not self.fresh_executors:
            pytest.skip("this backend runs the executor cases on its shared executor only")

    def needs_isolated_workers(self) -> None:
        """Skip a case that needs workers in processes of their own."""
        if not self.isolated_workers:
            pytest.skip("the backend's workers run in the client's process")
