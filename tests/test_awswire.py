"""The Fargate backend's part of the worker's wire environment (``backends/aws/wire.py``), its bootstrap's own
variables (``backends/aws/bootstrap.py``) and the worker exit codes (``protocol/exitcodes.py``): the wire module,
the worker and the core carry no AWS names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import cloudburst
from cloudburst.backends.aws import bootstrap
from cloudburst.backends.aws.fargate import FargateBackend
from cloudburst.backends.aws.wire import FargateWire
from cloudburst.protocol import exitcodes, workerenv
from cloudburst.protocol.workerenv import WireEnvironmentError, WorkerEnv, from_environ

SRC = Path(cloudburst.__file__).parent
WHERE = FargateWire(
    region="us-east-1",
    bucket="cloudburst-123456789012-us-east-1",  # the account is in the name: no STS call to learn the owner
    prefix="jobs/j1",
    task_queue="https://sqs.us-east-1.amazonaws.com/123456789012/tasks",
    result_queue="https://sqs.us-east-1.amazonaws.com/123456789012/results",
    dead_letter_queue="https://sqs.us-east-1.amazonaws.com/123456789012/dead",
    job_key_parameter="/cloudburst/jobs/j1/key",
)


def test_a_fargate_worker_connects_from_its_backend_args() -> None:
    """The job's bucket, prefix and queues travel in ``backend_args``, through the environment, to
    ``connect_worker``."""
    wire = WorkerEnv(job_id="j1", backend="fargate", job_key="ab", worker_id="t1", backend_args=WHERE.to_args())
    back = from_environ(wire.to_environ())
    assert FargateWire.from_args(back.backend_args) == WHERE
    side = FargateBackend.connect_worker(back)
    store, tasks, results = side.store, side.tasks, side.results
    assert (getattr(store, "bucket", None), getattr(store, "prefix", None)) == (WHERE.bucket, WHERE.prefix + "/")
    assert (getattr(tasks, "url", None), getattr(results, "url", None)) == (WHERE.task_queue, WHERE.result_queue)
    assert getattr(side.extra["dead_letters"], "url", None) == WHERE.dead_letter_queue


def test_the_wire_environment_holds_no_fargate_fields() -> None:
    wire_fields = {f.name for f in dataclasses.fields(WorkerEnv)}
    assert not wire_fields & {f.name for f in dataclasses.fields(FargateWire)}
    bootstraps = {bootstrap.BUNDLE_VARIABLE, bootstrap.NETRC_VARIABLE, bootstrap.ROOT_VARIABLE}
    assert not bootstraps & {name for name, _, _ in workerenv.describe()}  # the bootstrap's own, not wire ones


#: the failure table's rows for a Fargate worker's backend_args: (what is wrong, args, the error names)
BAD_ARGS = [
    ("a missing key", {k: v for k, v in WHERE.to_args().items() if k != "task_queue"}, "lacks task_queue"),
    ("nothing at all", {}, "lacks region, bucket, prefix, task_queue, result_queue"),
    ("an unknown key", {**WHERE.to_args(), "bukket": "b"}, "has unknown keys bukket"),
]


@pytest.mark.parametrize(("case", "args", "match"), BAD_ARGS, ids=[row[0] for row in BAD_ARGS])
def test_bad_backend_args_are_named(case: str, args: dict[str, str], match: str) -> None:
    env = WorkerEnv(job_id="j1", backend="fargate", job_key="ab", worker_id="t1", backend_args=args)
    with pytest.raises(WireEnvironmentError, match=match) as caught:
        FargateBackend.connect_worker(env)
    assert workerenv.variable("backend_args") in str(caught.value) and "fargate backend" in str(caught.value)


def test_the_bootstrap_exits_with_the_shared_environment_exit_code() -> None:
    source = bootstrap.script()
    namespace: dict[str, object] = {}
    exec(compile(source.replace('\nif __name__ == "__main__":\n    main()\n', "\n"), "bootstrap", "exec"), namespace)
    assert namespace["EXIT_ENVIRONMENT"] == exitcodes.EXIT_ENVIRONMENT != bootstrap.EXIT_ENVIRONMENT


def test_the_core_protocol_and_worker_import_no_aws_library() -> None:
    """boto3 and botocore belong to backends/aws (and the emulator): the backend-neutral parts never load them."""
    pattern = re.compile(r"^\s*(import|from)\s+(boto3|botocore)\b", re.MULTILINE)
    found = [
        str(path.relative_to(SRC))
        for folder in ("core", "protocol", "worker")
        for path in sorted((SRC / folder).rglob("*.py"))
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"AWS libraries imported outside the AWS backend: {found}"
