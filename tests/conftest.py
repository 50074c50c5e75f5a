"""Shared fixtures. ``backend`` is parametrised so the behaviour suite runs against every backend."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import cloudburst
from cloudburst.emulator import Emulator
from cloudburst.testing import fixtures

# The suite never reads or writes the user's own settings or job records.
_PRIVATE = Path(tempfile.mkdtemp(prefix="cloudburst-tests-"))
os.environ["CLOUDBURST_CONFIG_DIR"] = str(_PRIVATE / "config")
os.environ["CLOUDBURST_JOBS_DIR"] = str(_PRIVATE / "jobs")
os.environ["CLOUDBURST_CACHE_DIR"] = str(_PRIVATE / "cache")

BACKENDS = ["local", "fargate"]

LIVE_AWS_PROFILE = "CLOUDBURST_TEST_AWS_PROFILE"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``aws`` need a real account: without one named, they are skipped and say how to run them."""
    if os.environ.get(LIVE_AWS_PROFILE):
        return
    skip = pytest.mark.skip(
        reason=f"live AWS: set {LIVE_AWS_PROFILE} (and CLOUDBURST_TEST_AWS_REGION) to run; see docs/maintainers.md"
    )
    for item in items:
        if item.get_closest_marker("aws") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_warm_workers_after_the_test() -> Iterator[None]:
    """cloudburst.map keeps its workers warm for the next call, but not from one test into the next."""
    yield
    cloudburst.warm.shutdown()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds (the contract suite's helper, a shorter default)."""
    return fixtures.wait_until(predicate, timeout, interval)


def assert_nothing_left(pids: dict[str, int], job_dir: Path | None) -> None:
    assert wait_until(lambda: all(process_gone(p) for p in pids.values()), timeout=10), (
        f"worker processes still running: {pids}"
    )
    if job_dir is not None:
        assert not job_dir.exists(), f"job data left behind in {job_dir}"


def users_environment(home: Path) -> dict[str, str]:
    """A user's shell: no AWS account configured; cloudburst's settings and job records in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLOUDBURST_"))}
    return {
        **env,
        "CLOUDBURST_CONFIG_DIR": str(home / "config"),
        "CLOUDBURST_JOBS_DIR": str(home / "jobs"),
        "CLOUDBURST_CACHE_DIR": str(home / "cache"),
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


_EMULATORS: list[Emulator] = []

#: regions of their own for the files of set-up tests (each test takes a fresh one: no set-up of another
#: test is in its way); the emulated user holds the user and setup policies for each, as a user who runs
#: cloudburst in several regions would
SETUP_REGIONS = ("eu-west-1", "eu-west-2", "eu-central-1", "us-west-2", "ap-southeast-2", "ca-central-1")
STORAGE_REGIONS = ("ap-northeast-1", "eu-north-1", "ap-south-1", "eu-west-3", "us-east-2", "ap-northeast-2")
KMS_REGIONS = (
    *("us-west-1", "ap-southeast-1", "eu-south-1", "af-south-1", "ap-east-1", "me-south-1", "eu-central-2"),
    *("ap-south-2", "ap-southeast-3", "eu-south-2", "il-central-1", "me-central-1", "ap-northeast-3", "ap-southeast-4"),
)
SUITE_REGIONS = ("sa-east-1", *SETUP_REGIONS, *STORAGE_REGIONS, *KMS_REGIONS)  # sa-east-1: test_isolation


def fresh_region_fixture(names: Sequence[str], *, reuse: bool = False) -> Any:
    """A ``region`` fixture for a file of set-up tests: a region from ``names`` not yet handed out (or,
    with ``reuse``, the next in turn), with an empty config directory."""
    left = itertools.cycle(names) if reuse else iter(names)

    @pytest.fixture
    def region(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        name = next(left, None)
        assert name is not None, "out of fresh regions: add more to this file's list in conftest.py"
        monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path / "config"))
        return name

    return region


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """Emulated AWS for the whole session: moto on loopback and an ECS agent running real workers."""
    with Emulator(verbose=False, user_regions=SUITE_REGIONS) as emu:
        _EMULATORS.append(emu)
        yield emu
        _EMULATORS.remove(emu)


def worker_pids(ex: cloudburst.Executor) -> dict[str, int]:
    """Process ids of every worker an executor started: local processes, or emulated Fargate tasks."""
    pids = ex._job.worker_pids()
    launcher = ex._job.resources.launcher
    if _EMULATORS and hasattr(launcher, "task_ids"):
        ids = launcher.task_ids()
        pids.update({k: v for k, v in _EMULATORS[0].worker_pids().items() if k in ids})
    return pids


def assert_nothing_left_in_aws(emu: Emulator, job_id: str) -> None:
    """No queue, object or running task of the job remains in the emulated account."""
    import boto3

    sqs = boto3.client("sqs")
    assert wait_until(lambda: not sqs.list_queues(QueueNamePrefix=f"cloudburst-{job_id[:20]}").get("QueueUrls")), (
        "queues left behind"
    )
    s3 = boto3.client("s3")
    bucket = emu.resources["CLOUDBURST_BUCKET"]
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/").get("Contents"), "objects left behind"
    keys = boto3.client("ssm").get_parameters_by_path(Path=f"/cloudburst/jobs/{job_id}")["Parameters"]
    assert not keys, "job key parameter left behind"
    ecs = boto3.client("ecs")
    cluster = emu.resources["CLOUDBURST_CLUSTER"]

    def job_tasks_running() -> list[str]:
        arns = ecs.list_tasks(cluster=cluster, startedBy=f"cloudburst-{job_id[:24]}")["taskArns"]
        if not arns:
            return []
        tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
        return [t["taskArn"] for t in tasks if t["lastStatus"] != "STOPPED"]

    assert wait_until(lambda: not job_tasks_running(), timeout=15), f"tasks still running: {job_tasks_running()}"


def leftover_check(ex: cloudburst.Executor) -> Callable[[], None]:
    """Call before terminating ``ex``; call what it returns after, to assert that its job left nothing behind:
    no worker process, no job folder and, on emulated Fargate, no queue, object, key or task."""
    pids = worker_pids(ex)
    job_dir = getattr(ex._job.backend, "_root", None)

    def check() -> None:
        pids.update(worker_pids(ex))
        assert_nothing_left(pids, job_dir)
        if _EMULATORS and hasattr(ex._job.resources.launcher, "task_ids"):  # Fargate, or a subclass of it
            assert_nothing_left_in_aws(_EMULATORS[0], ex.job_id)

    return check


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "fargate":
        request.getfixturevalue("emulator")
    return str(request.param)


@pytest.fixture
def make_executor(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., cloudburst.Executor]]:
    """Create executors on the backend under test; afterwards assert that nothing is left behind."""
    made: list[cloudburst.Executor] = []
    if backend == "fargate":
        request.getfixturevalue("emulator")

    def make(*args: Any, **kwargs: Any) -> cloudburst.Executor:
        kwargs.setdefault("backend", backend)
        made.append(cloudburst.Executor(*args, **kwargs))
        return made[-1]

    yield make
    for ex in made:
        check = leftover_check(ex)
        ex.shutdown(wait=False, cancel_futures=True)
        ex.terminate()
        check()


@pytest.fixture
def executor(make_executor: Callable[..., cloudburst.Executor]) -> cloudburst.Executor:
    return make_executor(2)


@pytest.fixture
def client_pid() -> int:
    return os.getpid()


# What the worker loop itself imports; a user's environment adds its own packages to these.
WORKER_PACKAGES = ["cloudpickle", "tblib", "tqdm", "zstandard", "boto3", "platformdirs", "click", "tomli-w"]


@pytest.fixture(scope="session")
def stock_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A "stock Python image": a fresh interpreter environment with nothing but pip; and a requirements file."""
    root = tmp_path_factory.mktemp("stock")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    requirements = root / "requirements.txt"
    requirements.write_text("\n".join(f"{name}=={metadata.version(name)}" for name in WORKER_PACKAGES) + "\n")
    return root / "venv" / "bin" / "python", requirements
