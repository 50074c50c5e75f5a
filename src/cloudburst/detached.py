"""Detached jobs: the client sends the work and leaves; a later client collects the results.

::

    cb.submit_job(fn, items, backend="fargate")  ─►  every task queued, workers started,
          │                                          record saved in the user's data directory
          ▼                                          (job key included: never in the bucket)
    cb.attach(job_id).results()  ─►  drain the result queue ─► verify seals ─► keep each result
                                     message on disk ─► values in item order ─► delete the job's
                                     queues, data and workers once everything is in

The record file is readable by its owner only; results already collected stay on disk, so
``attach`` works again after the cloud side is gone.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backends import get_backend
from .backends.base import Backend
from .core.policy import ATTACHED, DispatchPolicy
from .core.session import Job
from .core.words import plural
from .core.work import rebuild_exception
from .errors import ConfigurationError, PayloadAuthenticationError, WorkerDiedError
from .log import say
from .protocol.sealing import job_tag
from .protocol.serialize import Unpacker
from .protocol.task import RESULT, ResultMessage, decode, read_dead_letters
from .protocol.workerenv import from_environ

__all__ = [
    "DETACHED",
    "SUBMIT_BACKEND",
    "DetachedJob",
    "attach",
    "jobs",
    "jobs_dir",
    "leave",
    "policy_for",
    "runs_detached",
]

#: where :func:`cloudburst.submit_job` sends work unless told otherwise: workers that outlive the client
SUBMIT_BACKEND = "fargate"

#: A detached session queues everything at once (the client may leave), in chunks cut without measuring
#: (no time to), reads no results (they wait for ``attach``), and leaves dead letters and the workers' stop
#: flag alone: the workers go on without the client.
DETACHED = DispatchPolicy(backlog=1 << 30, measure=False, collect=False, dead_letters=False, stop_flag=False)


def policy_for(backend: Backend) -> DispatchPolicy:
    """A session's dispatch policy: detached when its backend runs the job on without the client."""
    return DETACHED if backend.detached else ATTACHED


def runs_detached(job: Job) -> bool:
    """Whether the session queues everything for a later client (``leave`` it at shutdown)."""
    return job.table.policy is DETACHED


def leave(job: Job) -> dict[str, Any]:
    """Send every task, start the workers, record the job on disk and say how to collect it; the record."""
    job.wait_sent()
    with job.cond:
        tasks = {str(t.task_id): _indices(t.indices) for t in job.table.tasks.values()}
    wanted = min(job.backend.workers, math.ceil(len(tasks) / job.backend.tasks_per_worker))
    launcher = job.resources.launcher  # the manager starts them; wait until it has
    deadline = time.monotonic() + 120
    while launcher.running() < wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    record = {
        "job_id": job.id,
        "backend": job.options.backend,
        "created": time.time(),
        "items": job.table.next_index,
        "tasks": tasks,
        **job.backend.job_record(job.resources),
    }
    save_record(record)
    say(
        f"job {job.id} runs detached ({record['items']:,} items); collect its results with "
        f"cloudburst.attach({job.id!r}).results() — `cloudburst jobs` lists detached jobs"
    )
    return record


def _indices(indices: Sequence[int]) -> list[int]:
    """A task's item indices for a job record: ``[start, stop]`` for a range, else ``[-1, *indices]``."""
    if isinstance(indices, range):
        return [indices.start, indices.stop]
    return [-1, *indices]


def jobs_dir() -> Path:
    """Where detached jobs are recorded (``CLOUDBURST_JOBS_DIR`` or the user's data directory)."""
    override = os.environ.get("CLOUDBURST_JOBS_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("cloudburst")) / "jobs"


def save_record(record: dict[str, Any]) -> Path:
    folder = jobs_dir() / str(record["job_id"])
    (folder / "results").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "job.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the job key
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1)
    return path


class DetachedJob:
    """A detached job found again by its id."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.record: dict[str, Any] = json.loads((folder / "job.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"the record of detached job {folder.name} cannot be read ({exc}); if the job is no longer wanted, "
                f"delete {folder}"
            ) from exc
        self.job_id: str = self.record["job_id"]
        self.total: int = int(self.record["items"])
        self._key = bytes.fromhex(self.record["key"])
        self._env = from_environ(self.record["env"]).replace(job_key=self.record["key"])
        self._backend = get_backend(self.record["backend"])
        self._side: Any = None
        self._unpacker: Unpacker | None = None
        self._positions: dict[int, list[int]] = {
            int(task_id): (list(range(ix[0], ix[1])) if ix[0] >= 0 else ix[1:])
            for task_id, ix in self.record["tasks"].items()
        }

    # ------------------------------------------------------------------ state
    @property
    def collected(self) -> bool:
        return bool(self.record.get("collected"))

    def _result_files(self) -> list[Path]:
        return sorted((self.folder / "results").glob("*.msg"))

    def done_tasks(self) -> set[int]:
        return {int(p.stem) for p in self._result_files()} | {int(p.stem) for p in self._dead_files()}

    def _dead_files(self) -> list[Path]:
        return sorted((self.folder / "results").glob("*.dead"))

    def progress(self) -> tuple[int, int]:
        """(items with a result, items in the job)."""
        done = self.done_tasks()
        return sum(len(ix) for t, ix in self._positions.items() if t in done), self.total

    def done(self) -> bool:
        return self.done_tasks() >= set(self._positions)

    # ------------------------------------------------------------------ collecting
    def _connect(self) -> Any:
        if self._side is None:
            self._side = self._backend.connect_worker(self._env)
            cache = self.folder / "cache"
            cache.mkdir(exist_ok=True)
            self._unpacker = Unpacker(self._side.store, cache)
        return self._side

    def poll(self, wait: float = 1.0) -> int:
        """Move result messages from the queue to disk; returns how many tasks finished."""
        if self.collected:
            return 0
        side = self._connect()
        finished = self._poll_dead_letters(side.extra.get("dead_letters"))
        results = side.results
        while True:
            messages = results.receive(10, wait=wait)
            if not messages:
                return finished
            for message in messages:
                try:
                    kind, body = decode(self._key, message.body, job=job_tag(self.job_id))
                except PayloadAuthenticationError:
                    continue  # not sealed with this job's key: dropped unread
                # A result that asks for its chunk to be split carries the failure that made it ask:
                # with no client to split it, the chunk's items fail with it.
                if kind == RESULT and isinstance(body, ResultMessage):
                    path = self.folder / "results" / f"{body.task_id}.msg"
                    if not path.exists():
                        tmp = path.with_suffix(".tmp")
                        tmp.write_bytes(message.body)  # still sealed: checked again when read
                        tmp.replace(path)
                        finished += 1
            results.ack([m.receipt for m in messages])
            wait = 0

    def _poll_dead_letters(self, queue: Any) -> int:
        """Tasks the queue gave up on (every worker that took them vanished): their items fail."""
        if queue is None:
            return 0
        letters = read_dead_letters(self._key, queue, job=job_tag(self.job_id))
        after = int(self.record.get("dead_letter_after", 0))
        done, dead = self.done_tasks(), 0
        for letter in letters:
            # A copy put there by someone else: its deliveries are not used up, or its task is done.
            if letter.deliveries > after and letter.task.task_id in self._positions and letter.task.task_id not in done:
                (self.folder / "results" / f"{letter.task.task_id}.dead").write_text(str(letter.deliveries))
                dead += 1
        if letters:
            queue.ack([letter.receipt for letter in letters])
        return dead

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                done, total = self.progress()
                raise TimeoutError(f"job {self.job_id}: {done} of {plural(total, 'item')} finished within the timeout")
            self.poll(wait=5.0)

    def results(self, timeout: float | None = None, errors: str = "raise") -> list[Any]:
        """Every item's value in item order, waiting for the rest; then the job's cloud resources go."""
        if errors not in ("raise", "return", "skip"):
            raise ConfigurationError(f"errors={errors!r} must be one of 'raise', 'return' or 'skip'")
        self.wait(timeout)
        values: list[Any] = [None] * self.total
        failed: dict[int, BaseException] = {}
        self._connect()
        for path in self._result_files():
            _, result = decode(self._key, path.read_bytes(), job=job_tag(self.job_id))
            assert isinstance(result, ResultMessage)
            positions = self._positions.get(result.task_id, [])
            where = f"task {result.task_id} on worker {result.worker_id}"
            if result.failure is not None:
                exc = rebuild_exception(result.failure, where=where)
                failed.update(dict.fromkeys(positions, exc))
                continue
            assert self._unpacker is not None
            loaded = self._unpacker.unpack(result.values) if result.values is not None else [None] * len(positions)
            for pos, (index, value) in enumerate(zip(positions, loaded, strict=False)):  # type: ignore[call-overload]
                if pos in result.errors:
                    failed[index] = rebuild_exception(result.errors[pos], where=f"item {index} on {where}")
                else:
                    values[index] = value
        for path in self._dead_files():
            task_id = int(path.stem)
            if (self.folder / "results" / f"{task_id}.msg").exists():
                continue  # a worker finished it after all
            died = WorkerDiedError(
                f"task {task_id}: delivered {path.read_text()} times, and its worker vanished each time; the "
                "queue moved it to the dead-letter queue",
                attempts=int(path.read_text() or 0),
            )
            failed.update(dict.fromkeys(self._positions.get(task_id, []), died))
        self.forget_cloud()
        if failed and errors == "raise":
            first = min(failed)
            raise failed[first]
        if errors == "return":
            return [failed.get(i, v) for i, v in enumerate(values)]
        if errors == "skip":
            return [v for i, v in enumerate(values) if i not in failed]
        return values

    def forget_cloud(self) -> None:
        """Stop the job's workers and delete its queues and data (results already on disk stay)."""
        if self.collected:
            return
        self._backend.forget_job(self.record)
        self.record["collected"] = time.time()
        save_record(self.record)


def attach(job_id: str) -> DetachedJob:
    """The detached job ``job_id`` (a unique prefix is enough), with its finished results."""
    folder = jobs_dir()
    matches = [p for p in folder.glob(f"{job_id}*") if (p / "job.json").exists()] if folder.exists() else []
    if len(matches) != 1:
        known = ", ".join(sorted(p.name[:12] for p in folder.glob("*"))) if folder.exists() else "none"
        what = "no" if not matches else "more than one"
        raise ConfigurationError(f"{what} detached job matches {job_id!r} in {folder}; known jobs: {known}")
    return DetachedJob(matches[0])


def jobs() -> list[DetachedJob]:
    """Detached jobs recorded on this machine, newest first."""
    folder = jobs_dir()
    if not folder.exists():
        return []
    found = [DetachedJob(p) for p in folder.iterdir() if (p / "job.json").exists()]
    return sorted(found, key=lambda j: -float(j.record.get("created", 0)))
