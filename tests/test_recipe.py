"""The image recipe installs: its requirements, installed with uv into a fresh virtual environment, run
the worker loop against the emulated queue. (No Docker engine runs here; this is the recipe minus the
container.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import boto3
import pytest

import cloudburst
from cloudburst.emulator import Emulator, network_env
from cloudburst.environment.recipe import build_context, tag
from cloudburst.environment.snapshot import snapshot

from .conftest import WORKER_PACKAGES, assert_nothing_left_in_aws


def whoami(x: int) -> tuple[int, str]:
    return x * 2, sys.prefix


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recipe")
    requirements = root / "requirements.in"
    requirements.write_text("\n".join(f"{name}=={metadata.version(name)}" for name in WORKER_PACKAGES) + "\n")
    context = build_context(snapshot(requirements), root / "context")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "uv"], check=True, timeout=600)
    subprocess.run(  # the recipe's own install line: uv pip install -r requirements.txt
        [str(venv / "bin" / "uv"), "pip", "install", "--python", str(python), "-r", str(context / "requirements.txt")],
        check=True,
        timeout=600,
    )
    return python, context


def test_the_recipe_installs_and_runs_the_worker_loop(emulator: Emulator, image_env: tuple[Path, Path]) -> None:
    python, context = image_env
    # the recipe's ENV PYTHONPATH=/cloudburst/lib
    with emulator.image(python, {"PYTHONPATH": str(context)}), cloudburst.Executor(1, backend="fargate") as ex:
        results = list(ex.map(whoami, range(3)))
    assert [r[0] for r in results] == [0, 2, 4]
    assert {r[1] for r in results} == {str(python.parent.parent)}  # ran in the fresh environment


# ---------------------------------------------------------------- the no-build fallback: image="python"


def test_image_python_installs_the_snapshot_as_workers_start(
    emulator: Emulator, stock_python: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    python, requirements = stock_python
    s3 = boto3.client("s3")
    bucket = emulator.resources["CLOUDBURST_BUCKET"]
    with emulator.image(python, network_env()):
        with cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements)) as ex:
            results = list(ex.map(whoami, range(3)))
            job_id = ex.job_id
        key = f"envs/{tag(snapshot(requirements))}.zip"
        uploaded = s3.head_object(Bucket=bucket, Key=key)
        capsys.readouterr()
        with cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements)) as ex:
            again = ex.submit(whoami, 5).result()
        found = s3.head_object(Bucket=bucket, Key=key)
        second_run = capsys.readouterr().err
    assert [r[0] for r in results] == [0, 2, 4]
    assert {r[1] for r in results} == {str(python.parent.parent)}  # ran in the "stock image", once installed
    assert again == (10, str(python.parent.parent))
    assert "bundle uploaded" not in second_run  # found by its tag: one HeadObject
    assert found["ETag"] == uploaded["ETag"] and found["LastModified"] == uploaded["LastModified"]  # not uploaded again
    ecs = emulator.admin("ecs")  # every task definition: more than the user may list
    families = ecs.list_task_definitions()["taskDefinitionArns"]
    definitions = [ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"] for arn in families]
    stock = [
        d
        for d in definitions
        if d["containerDefinitions"][0]["image"].startswith(
            f"public.ecr.aws/docker/library/python:{snapshot().python}-slim-bookworm@sha256:"
        )
    ]
    assert stock, "no task definition on the stock Python image"
    container = stock[0]["containerDefinitions"][0]
    assert container["command"][:2] == ["python", "-c"] and "cloudburst.worker" in container["command"][2]
    bundle = {e["name"]: e["value"] for e in container["environment"]}["CLOUDBURST_BUNDLE"]
    assert bundle.startswith(f"s3://{bucket}/envs/py") and "#" in bundle
    assert_nothing_left_in_aws(emulator, job_id)


def use_local_package(x: int) -> int:
    import cbdemo  # type: ignore[import-not-found]  # only on the workers: installed from a local wheel

    return int(cbdemo.triple(x))


def test_a_local_package_is_built_into_a_wheel_and_installed_on_workers(
    emulator: Emulator, stock_python: tuple[Path, Path], tmp_path: Path
) -> None:
    package = tmp_path / "cbdemo"
    (package / "src" / "cbdemo").mkdir(parents=True)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "cbdemo"\nversion = "0.1"\n'
    )
    (package / "src" / "cbdemo" / "__init__.py").write_text("def triple(x):\n    return 3 * x\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"-r {stock_python[1]}\n-e ./cbdemo\n")
    snap = snapshot(requirements)
    assert snap.local == (str(package),) and snap.local_digest
    with (
        emulator.image(stock_python[0], network_env()),
        cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements)) as ex,
    ):
        assert list(ex.map(use_local_package, range(4))) == [0, 3, 6, 9]


def what_the_worker_sees(_: int) -> tuple[str | None, bool]:
    return os.environ.get("NETRC"), "CLOUDBURST_NETRC" in os.environ


def test_a_private_index_login_reaches_the_install_and_nothing_else(
    emulator: Emulator, stock_python: tuple[Path, Path], tmp_path: Path
) -> None:
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class PrivateIndex(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404 if self.headers.get("Authorization") else 401)
            if not self.headers.get("Authorization"):
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), PrivateIndex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    requirements = tmp_path / "requirements.txt"
    index = f"http://bot:s3cret-{os.getpid()}@127.0.0.1:{server.server_address[1]}/simple"
    requirements.write_text(f"--extra-index-url {index}\n-r {stock_python[1]}\n")
    fresh = tmp_path / "venv"  # a new container: nothing installed, so uv asks the indexes
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True)
    try:
        with (
            emulator.image(fresh / "bin" / "python", network_env()),
            cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements)) as ex,
        ):
            netrc_seen, secret_seen = ex.submit(what_the_worker_sees, 0).result(timeout=240)
    finally:
        server.shutdown()
    expected = "Basic " + base64.b64encode(f"bot:s3cret-{os.getpid()}".encode()).decode()
    assert expected in seen  # uv sent the login to the private index
    assert (netrc_seen, secret_seen) == (None, False)  # and user code does not see it
    ecs = emulator.admin("ecs")  # every task definition: more than the user may list
    for arn in ecs.list_task_definitions()["taskDefinitionArns"]:
        text = json.dumps(ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"], default=str)
        assert f"s3cret-{os.getpid()}" not in text
