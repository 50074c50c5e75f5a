"""The Fargate backend's own failure table and features, against emulated AWS (moto + the ECS agent emulator).

The behaviour suite and the shared failure table already run against this
backend; here are the failures only the cloud has: workers that vanish,
Spot interruptions, throttled or refused launches, bad sizes, missing set-up,
a client that dies, payloads above the queue's size limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

import cloudburst
from cloudburst.backends.aws.wire import FargateWire
from cloudburst.emulator import Emulator
from cloudburst.protocol.workerenv import from_environ

from .conftest import assert_nothing_left_in_aws, process_gone, wait_until


def slow_identity(x: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return x


def echo_bytes(data: bytes) -> bytes:
    return data[::-1]


@pytest.fixture
def fargate(emulator: Emulator) -> Any:
    """Make Fargate executors; afterwards, nothing of theirs is left in the emulated account."""
    made: list[cloudburst.Executor] = []

    def make(*args: Any, **kwargs: Any) -> cloudburst.Executor:
        ex = cloudburst.Executor(*args, backend="fargate", **kwargs)
        made.append(ex)
        return ex

    yield make
    emulator.clear_faults()
    for ex in made:
        ex.terminate()
        assert_nothing_left_in_aws(emulator, ex.job_id)


def holder_of_a_running_task(ex: cloudburst.Executor) -> str:
    """The Fargate task id of a worker that has announced a task it is running."""
    holders: list[str] = []

    def found() -> bool:
        holders.extend(t.workers[-1] for t in list(ex._job.table.tasks.values()) if t.workers)
        return bool(holders)

    assert wait_until(found, timeout=30)
    return holders[0].split(".")[0]


def calls_of(emulator: Emulator, *names: str) -> int:
    return sum(emulator.calls.get(name, 0) for name in names)


def test_worker_killed_mid_task_is_replaced_and_work_survives(
    emulator: Emulator, fargate: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = fargate(2)
    futures = [ex.submit(slow_identity, i, 0.5) for i in range(8)]
    victim = holder_of_a_running_task(ex)
    emulator.kill_worker(victim)
    assert [f.result(timeout=60) for f in futures] == list(range(8))
    err = capsys.readouterr().err
    assert f"worker {victim}" in err and "killed by SIGKILL" in err


def test_spot_interruption_is_retried_not_fatal(emulator: Emulator, fargate: Any) -> None:
    ex = fargate(2, spot=True)
    futures = [ex.submit(slow_identity, i, 0.5) for i in range(6)]
    emulator.interrupt_spot(holder_of_a_running_task(ex))
    assert [f.result(timeout=60) for f in futures] == list(range(6))
    launcher = ex._job.resources.launcher
    assert wait_until(
        lambda: any(t.get("stopCode") == "SpotInterruption" for t in launcher.described.values()), timeout=15
    )


def test_run_task_throttled_backs_off_and_recovers(emulator: Emulator, fargate: Any) -> None:
    rule = emulator.throttle("ecs", "RunTask", times=8)  # more than botocore's own retries
    ex = fargate(1)
    assert ex.submit(abs, -7).result(timeout=60) == 7
    assert rule.hits == 8
    assert any("throttled" in line for line in ex._job.resources.launcher.notices)


def test_run_task_capacity_shortage_backs_off_and_recovers(emulator: Emulator, fargate: Any) -> None:
    rule = emulator.capacity_shortage(times=2)
    ex = fargate(1)
    assert ex.submit(abs, -8).result(timeout=60) == 8
    assert rule.hits == 2
    assert any("Capacity is unavailable" in line for line in ex._job.resources.launcher.notices)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cpu": 1, "memory": "16GB"}, r"memory=16GB is not valid with cpu=1 on Fargate; valid memory for cpu=1: 2GB"),
        ({"cpu": 3}, r"cpu=3 is not a Fargate task size; use one of cpu=0.25, 0.5, 1, 2, 4, 8, 16"),
        ({"cpu": 0.25, "memory": "4GB"}, r"valid memory for cpu=0.25: 0.5GB, 1GB, 2GB"),
        ({"arch": "sparc"}, r"arch='sparc' must be 'x86_64' or 'arm64'"),
        ({"ephemeral_storage": 500}, r"ephemeral_storage=500 must be a number from 20 to 200"),
        ({"subnet": ["subnet-1"]}, r"unknown parameter 'subnet' \(did you mean 'subnets'\?\)"),
        ({"requirements": "/no/such/requirements.txt"}, r"requirements='/no/such/requirements.txt' is not a file"),
        ({"requirements": __file__}, r"is not a requirements\*\.txt, uv\.lock or pyproject\.toml file"),
    ],
)
def test_bad_fargate_parameters_are_refused_before_any_call(
    emulator: Emulator, kwargs: dict[str, Any], match: str
) -> None:
    before = calls_of(emulator, "ecs.RunTask", "sqs.CreateQueue", "ecs.RegisterTaskDefinition")
    with pytest.raises(cloudburst.ConfigurationError, match=match):
        cloudburst.Executor(1, backend="fargate", **kwargs)
    assert calls_of(emulator, "ecs.RunTask", "sqs.CreateQueue", "ecs.RegisterTaskDefinition") == before


def test_missing_setup_says_to_run_setup(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path))  # a machine where setup never ran
    before = calls_of(emulator, "ecs.RunTask", "sqs.CreateQueue")
    with pytest.raises(
        cloudburst.NotSetUpError,
        match=r"not set up: no bucket, cluster, subnets, security_groups, execution_role_arn, worker_boundary_arn "
        r"configured\. "
        r"Run `cloudburst setup`.*or use backend='local'",
    ):
        cloudburst.map(abs, [1], backend="fargate")
    assert calls_of(emulator, "ecs.RunTask", "sqs.CreateQueue") == before


def test_without_an_image_this_environments_image_is_found_or_built(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudburst.config import userconfig
    from cloudburst.environment.recipe import tag
    from cloudburst.environment.snapshot import snapshot

    monkeypatch.setenv("CLOUDBURST_IMAGE", "")
    saved = userconfig.load()
    userconfig.unset_value("image")
    try:
        builds = len(emulator.builds)
        ex = cloudburst.Executor(1, backend="fargate")
        assert ex.submit(abs, -6).result(timeout=60) == 6
        ex.shutdown()
        image = ex._job.backend.settings.image
        assert "/cloudburst@sha256:" in image  # run by digest
        pushed = f"{image.split('@')[0]}:{tag(snapshot())}"
        assert emulator.builds[builds:] in ([pushed], [])  # built now, or found from an earlier run
        assert "CodeBuild build" in capsys.readouterr().err or builds > 0
        again = cloudburst.Executor(1, backend="fargate")
        again.shutdown()
        assert again._job.backend.settings.image == image
        assert len(emulator.builds) <= builds + 1  # the second executor found it by its tag
        userconfig.unset_value("build_role_arn")
        with pytest.raises(cloudburst.NotSetUpError, match=r"no role to build one: run `cloudburst setup`"):
            cloudburst.Executor(1, backend="fargate")
    finally:
        userconfig.save(saved)


def test_payloads_over_the_message_limit_go_through_s3(emulator: Emulator, fargate: Any) -> None:
    big = os.urandom(2 << 20)  # incompressible, eight times the inline limit
    ex = fargate(1)
    before = calls_of(emulator, "s3.PUTObject")
    assert ex.submit(echo_bytes, big).result(timeout=60) == big[::-1]
    assert calls_of(emulator, "s3.PUTObject") >= before + 2  # the argument and the result


def test_local_workers_start_work_during_the_cold_start(emulator: Emulator, fargate: Any) -> None:
    assert emulator.agent is not None
    emulator.agent.cold_start = 60.0
    try:
        ex = fargate(2, local_workers=1)
        assert ex.submit(abs, -3).result(timeout=30) == 3
        assert not emulator.workers()  # done by the local worker while the Fargate tasks still start
    finally:
        emulator.agent.cold_start = 0.0


CLIENT = """
import sys, time
import cloudburst

def slow(x):
    time.sleep(600)
    return x

ex = cloudburst.Executor(2, backend="fargate", client_timeout=10)
futures = [ex.submit(slow, i) for i in range(2)]
while not all(f.running() for f in futures):
    time.sleep(0.1)
print("JOB", ex.job_id, *ex._job.resources.launcher.task_ids(), flush=True)
time.sleep(600)
"""


def test_client_killed_workers_stop_on_their_own(emulator: Emulator, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLIENT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("JOB"), (line, proc.stderr.read() if proc.stderr else "")
    job_id, *task_ids = line.split()[1:]
    pids = {t: p for t, p in emulator.worker_pids().items() if t in task_ids}
    assert pids
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # No one stops them: they notice the client's silence (client_timeout=10) and retire.
    assert wait_until(lambda: all(process_gone(p) for p in pids.values()), timeout=60), "workers outlived the client"
    ecs = boto3.client("ecs")
    cluster = emulator.resources["CLOUDBURST_CLUSTER"]
    assert wait_until(
        lambda: all(t["lastStatus"] == "STOPPED" for t in ecs.describe_tasks(cluster=cluster, tasks=task_ids)["tasks"]),
        timeout=10,
    )
    # What the dead client could not delete is found by its names and tags, and removed.
    ssm = boto3.client("ssm")
    (key,) = ssm.get_parameters_by_path(Path=f"/cloudburst/jobs/{job_id}")["Parameters"]
    tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=key["Name"])["TagList"]
    assert {"Key": "cloudburst:job", "Value": job_id} in tags
    status = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "status", "--json"], capture_output=True, text=True, check=True
    )
    (row,) = [r for r in json.loads(status.stdout) if r["job_id"] == job_id]
    assert row["workers"] == {"STOPPED": len(task_ids)} and row["tasks_running"] + row["tasks_waiting"] == 2
    assert row["cost_usd"] > 0
    cleaned = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "cleanup", "--yes", "--older-than", "0", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    removed = json.loads(cleaned.stdout)[job_id]
    assert sum(r.startswith("queue ") for r in removed) == 3 and any(r.startswith("key ") for r in removed)
    assert_nothing_left_in_aws(emulator, job_id)


def test_every_launched_task_is_tagged_with_its_job(emulator: Emulator, fargate: Any) -> None:
    ex = fargate(2)
    assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    ecs = boto3.client("ecs")
    ids = sorted(ex._job.resources.launcher.task_ids())
    assert ids
    tasks = ecs.describe_tasks(cluster=emulator.resources["CLOUDBURST_CLUSTER"], tasks=ids, include=["TAGS"])["tasks"]
    for task in tasks:
        tags = {t["key"]: t["value"] for t in task.get("tags", [])}
        assert tags.get("cloudburst:job") == ex.job_id


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_multi_cpu_worker_runs_tasks_side_by_side(emulator: Emulator, fargate: Any) -> None:
    ex = fargate(1, cpu=2)
    pids = list(ex.map(pid_after, [1.0] * 4, chunksize=1))
    assert len(set(pids)) == 2  # one Fargate task, two worker processes in it
    assert len(ex._job.resources.launcher.task_ids()) == 1


def say_then_wait(mark: str) -> int:
    os.write(2, f"{mark} from worker process {os.getpid()}\n".encode())  # the worker's own output, not captured
    time.sleep(4)
    return os.getpid()


def test_multi_cpu_worker_logs_reach_cloudwatch_while_the_children_run(emulator: Emulator, fargate: Any) -> None:
    ex = fargate(1, cpu=2)
    marks = [f"MARK-{os.getpid()}-{i}" for i in range(2)]
    futures = [ex.submit(say_then_wait, m) for m in marks]

    def logged() -> str:
        import boto3

        pages = boto3.client("logs").get_paginator("filter_log_events")
        found = pages.paginate(logGroupName="/cloudburst/workers", filterPattern=f"MARK-{os.getpid()}")
        return "\n".join(e["message"] for page in found for e in page["events"])

    assert wait_until(lambda: all(m in logged() for m in marks), timeout=20), logged()[-2000:]
    assert not any(f.done() for f in futures)  # seen while the children still run, not when they exit
    assert len({f.result(timeout=30) for f in futures}) == 2


def die_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os.write(2, f"LAST-WORDS-{os.path.basename(marker)}".encode())  # no newline: the process ends here
        os._exit(3)
    return os.getpid()


def test_a_multi_cpu_workers_child_that_dies_is_reported_and_replaced(
    emulator: Emulator, fargate: Any, tmp_path: Path
) -> None:
    ex = fargate(1, cpu=2, retries=1)
    marker = tmp_path / f"marker-{os.getpid()}"
    assert ex.submit(die_once, str(marker)).result(timeout=60) > 0  # ran again, in a new worker process
    assert ex.submit(pid_after, 0.1).result(timeout=30) > 0
    assert len(ex._job.resources.launcher.task_ids()) == 1  # the same Fargate task: its supervisor lived on
    assert ex._job.stats["worker_deaths"] >= 1

    def logged() -> str:
        import boto3

        pages = boto3.client("logs").get_paginator("filter_log_events")
        found = pages.paginate(logGroupName="/cloudburst/workers", filterPattern=f"LAST-WORDS-{marker.name}")
        return "\n".join(e["message"] for page in found for e in page["events"])

    assert wait_until(lambda: f"LAST-WORDS-{marker.name}" in logged(), timeout=20)


DETACHED_CLIENT = """
import time
import cloudburst

def square_slowly(x):
    time.sleep(0.2)
    return x * x

print("JOB", cloudburst.submit_job(square_slowly, range(30), workers=2, chunksize=3), flush=True)
"""


def test_detached_job_outlives_its_client_and_attach_collects_it(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDBURST_JOBS_DIR", str(tmp_path / "jobs"))
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(DETACHED_CLIENT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[1]
    assert "runs detached" in done.stderr and f"cloudburst.attach('{job_id}')" in done.stderr
    record = json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())
    assert (tmp_path / "jobs" / job_id / "job.json").stat().st_mode & 0o077 == 0  # it holds the job key
    assert emulator.workers(), "the workers stopped with the client"

    listed = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "jobs", "--json"], capture_output=True, text=True, check=True
    )
    (row,) = json.loads(listed.stdout)
    assert row["job_id"] == job_id and row["items"] == 30 and row["state"] in ("running", "finished")

    job = cloudburst.attach(job_id[:10])
    assert job.results(timeout=90) == [x * x for x in range(30)]
    assert_nothing_left_in_aws(emulator, job_id)
    assert all(process_gone(p) for t, p in emulator.worker_pids().items() if t in record["task_ids"]) or wait_until(
        lambda: all(process_gone(p) for t, p in emulator.worker_pids().items() if t in record["task_ids"])
    )
    # Collected results stay on this machine: attaching again needs no AWS resource.
    assert cloudburst.attach(job_id).results() == [x * x for x in range(30)]
    assert cloudburst.jobs()[0].collected


def test_attach_to_an_unknown_job_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBURST_JOBS_DIR", str(tmp_path))
    with pytest.raises(cloudburst.ConfigurationError, match=r"no detached job matches 'nope'.*known jobs"):
        cloudburst.attach("nope")


def test_task_definition_is_registered_once_per_shape(emulator: Emulator, fargate: Any) -> None:
    fargate(1, cpu=0.5, memory="1GB").submit(abs, -1).result(timeout=60)
    registered = calls_of(emulator, "ecs.RegisterTaskDefinition")
    fargate(1, cpu=0.5, memory="1GB").submit(abs, -1).result(timeout=60)
    assert calls_of(emulator, "ecs.RegisterTaskDefinition") == registered  # same shape: reused
    ex = fargate(1, cpu=0.5, memory="1GB")
    ex.submit(abs, -1).result(timeout=60)
    definition = boto3.client("ecs").describe_task_definition(
        taskDefinition=ex._job.resources.launcher.task_definition
    )["taskDefinition"]
    assert (definition["cpu"], definition["memory"]) == ("512", "1024")
    assert definition["requiresCompatibilities"] == ["FARGATE"] and definition["networkMode"] == "awsvpc"
    logs = definition["containerDefinitions"][0]["logConfiguration"]
    assert (
        logs["logDriver"] == "awslogs"
        and logs["options"]["awslogs-group"] == emulator.resources["CLOUDBURST_LOG_GROUP"]
    )
    env = {e["name"] for e in definition["containerDefinitions"][0].get("environment", [])}
    assert not any("KEY" in name or "SECRET" in name for name in env)  # nothing secret in the definition
    # Nor in what RunTask was asked (DescribeTasks and CloudTrail show overrides): only the key's SSM name.
    ecs = boto3.client("ecs")
    ids = sorted(ex._job.resources.launcher.task_ids())
    task = ecs.describe_tasks(cluster=emulator.resources["CLOUDBURST_CLUSTER"], tasks=ids)["tasks"][0]
    overrides = {e["name"]: e["value"] for e in task["overrides"]["containerOverrides"][0]["environment"]}
    assert "CLOUDBURST_JOB_KEY" not in overrides
    assert ex._job.key.hex() not in json.dumps(task, default=str)
    where = FargateWire.from_args(from_environ(overrides).backend_args)
    parameter = boto3.client("ssm").get_parameter(Name=where.job_key_parameter)["Parameter"]
    assert parameter["Type"] == "SecureString"


def test_run_task_starts_at_most_ten_per_call(emulator: Emulator, fargate: Any) -> None:
    before = calls_of(emulator, "ecs.RunTask")
    ex = fargate(12, cpu=0.25, memory="0.5GB")
    assert list(ex.map(abs, range(-24, 0), chunksize=1)) == list(range(24, 0, -1))
    assert len(ex._job.resources.launcher.task_ids()) <= 12
    assert calls_of(emulator, "ecs.RunTask") - before >= 2  # 12 workers: 10 + 2


def shout(x: int) -> int:
    print(f"shouting {x}")
    return x


def test_worker_output_reaches_cloudwatch_logs(emulator: Emulator, fargate: Any) -> None:
    ex = fargate(1)
    assert ex.submit(shout, 42).result(timeout=60) == 42
    (task_id,) = ex._job.resources.launcher.task_ids()
    ex.shutdown()
    logs = boto3.client("logs")
    group = emulator.resources["CLOUDBURST_LOG_GROUP"]

    def lines() -> str:
        events = logs.get_log_events(logGroupName=group, logStreamName=f"cloudburst/worker/{task_id}")["events"]
        return "\n".join(e["message"] for e in events)

    assert wait_until(lambda: f"cloudburst-worker {task_id}: started for job {ex.job_id[:12]}" in lines(), timeout=30)
    assert wait_until(lambda: "exit reason: stopped by SIGTERM" in lines(), timeout=30), lines()


def test_dead_lettered_task_fails_its_future(emulator: Emulator, fargate: Any) -> None:
    import base64

    assert emulator.agent is not None
    emulator.agent.cold_start = 120.0  # no worker takes the task: it waits in the queue
    try:
        ex = fargate(1)
        future = ex.submit(abs, -5)
        sqs = boto3.client("sqs")
        queues = ex._job.backend._queues
        received: list[str] = []

        def take_and_drop() -> bool:
            """Receive the task and let its lease lapse at once, as a worker that vanishes each time would."""
            got = sqs.receive_message(QueueUrl=queues.tasks, VisibilityTimeout=0).get("Messages", [])
            received.extend(m["Body"] for m in got)
            return bool(received) and not got  # delivered, and now gone: SQS moved it to the dead-letter queue

        assert wait_until(take_and_drop, timeout=30)
        assert len(received) >= 4 and base64.b64decode(received[0])  # maxReceiveCount = retries + 2
        with pytest.raises(cloudburst.WorkerDiedError, match=r"moved it to the dead-letter queue"):
            future.result(timeout=40)
    finally:
        emulator.agent.cold_start = 0.0


CTRL_C_CLIENT = """
import time
import cloudburst

def slow(x):
    time.sleep(600)
    return x

with cloudburst.Executor(2, backend="fargate") as ex:
    results = ex.map(slow, range(4), chunksize=1)
    while sum(1 for t in ex._job.table.tasks.values() if t.workers) < 2:
        time.sleep(0.1)
    print("JOB", ex.job_id, *ex._job.resources.launcher.task_ids(), flush=True)
    list(results)
"""


def test_ctrl_c_stops_the_tasks_and_deletes_the_job(emulator: Emulator, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CTRL_C_CLIENT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("JOB"), (line, proc.stderr.read() if proc.stderr else "")
    job_id, *task_ids = line.split()[1:]
    pids = [p for t, p in emulator.worker_pids().items() if t in task_ids]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=30)
    assert_nothing_left_in_aws(emulator, job_id)


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def test_logs_show_a_failing_task(emulator: Emulator, fargate: Any) -> None:
    ex = fargate(1)
    futures = [ex.submit(fail_on_three, i) for i in range(5)]
    with pytest.raises(ValueError, match="bad item 3"):
        futures[3].result(timeout=60)
    (worker,) = ex._job.resources.launcher.task_ids()
    ex.shutdown()
    run = {"capture_output": True, "text": True, "check": False}
    assert wait_until(
        lambda: (
            "ValueError: bad item 3"
            in subprocess.run([sys.executable, "-m", "cloudburst.cli", "logs", ex.job_id[:12]], **run).stdout
        ),
        timeout=30,
    )
    out = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "logs", ex.job_id, "--worker", worker[:8], "--tail", "50"], **run
    ).stdout
    # The task's worker process is the supervisor's child 0 (the machine is the Fargate task).
    assert f"[{worker[:12]}] cloudburst-worker {worker}.0: task" in out and "item 3 failed" in out
    assert 'raise ValueError(f"bad item {x}")' in out or "ValueError: bad item 3" in out
    nothing = subprocess.run([sys.executable, "-m", "cloudburst.cli", "logs", "feedface"], **run)
    assert nothing.returncode != 0 and "no job 'feedface' here" in nothing.stderr


def test_debug_keeps_workers_up_with_ecs_exec_and_says_how(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = cloudburst.Executor(1, backend="fargate", debug=True)
    assert ex.submit(abs, -4).result(timeout=60) == 4
    (task_id,) = ex._job.resources.launcher.task_ids()
    ex.shutdown()
    err = capsys.readouterr().err
    assert f"aws ecs execute-command --cluster cloudburst --task {task_id} --container worker --interactive" in err
    assert [t.task_id for t in emulator.workers()] == [task_id]  # still running after the job
    ecs = boto3.client("ecs")
    (task,) = ecs.describe_tasks(cluster="cloudburst", tasks=[task_id])["tasks"]
    assert task["lastStatus"] == "RUNNING"
    cleaned = subprocess.run(
        [sys.executable, "-m", "cloudburst.cli", "cleanup", "--yes", "--older-than", "0", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"worker {task_id}" in json.loads(cleaned.stdout)[ex.job_id]
    assert_nothing_left_in_aws(emulator, ex.job_id)


def test_image_and_requirements_default_to_none(tmp_path: Path) -> None:
    from cloudburst.backends.aws.settings import FargateSettings

    settings = FargateSettings.resolve({"image": None, "requirements": None}, environ={})
    assert (settings.image, settings.requirements) == ("", "")
    (tmp_path / "requirements.txt").write_text("attrs\n")
    named = FargateSettings.resolve({"image": "python", "requirements": str(tmp_path / "requirements.txt")}, {})
    assert (named.image, named.requirements) == ("python", str((tmp_path / "requirements.txt").resolve()))
