"""Worker images in (emulated) ECR: a cache hit reuses, a miss builds through CodeBuild."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import boto3
import pytest

from cloudburst.backends.aws.images import (
    BUILD_PROJECT,
    docker_engine,
    ensure_bundle,
    ensure_image,
    find_image,
    list_images,
    store_index_credentials,
)
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator
from cloudburst.environment.recipe import base_image, tag
from cloudburst.environment.snapshot import Snapshot, index_credentials, snapshot


def settings() -> dict[str, str]:
    values = userconfig.load()
    return {
        "region": values["region"],
        "profile": None,
        "repository": values["ecr_repository"],
        "bucket": values["bucket"],
        "role_arn": values["build_role_arn"],
    }


@pytest.mark.skipif(docker_engine(), reason="a Docker engine here would build locally instead of CodeBuild")
def test_cache_miss_builds_through_codebuild_then_hits(emulator: Emulator) -> None:
    snap = Snapshot(python="3.11", requirements=("numpy==2.1.0", f"zzz-unique=={time.time_ns()}"))
    lines: list[str] = []
    before = emulator.calls.get("codebuild.StartBuild", 0)
    uri = ensure_image(snap, echo=lines.append, **settings())  # type: ignore[arg-type]
    assert "/cloudburst@sha256:" in uri  # run by digest
    assert emulator.calls.get("codebuild.StartBuild", 0) == before + 1
    assert emulator.builds[-1] == f"{uri.split('@')[0]}:{tag(snap)}"
    assert any("CodeBuild build" in line for line in lines) and lines[-1].endswith(f"{uri} ({tag(snap)})")
    phases = [line for line in lines if "image build [" in line]
    assert phases and re.search(r"image build \[11/11\] completed \(took \d+:\d\d\)", phases[-1]), phases

    # The build context went to S3: the recipe, the pinned requirements, cloudburst itself.
    s3 = boto3.client("s3")
    body = s3.get_object(Bucket=settings()["bucket"], Key=f"builds/{tag(snap)}.zip")["Body"].read()
    names = set(zipfile.ZipFile(io.BytesIO(body)).namelist())
    assert {"Dockerfile", "requirements.txt", "buildspec.yml", "cloudburst/worker/loop.py"} <= names
    project = boto3.client("codebuild").batch_get_projects(names=[BUILD_PROJECT])["projects"][0]
    assert project["serviceRole"] == settings()["role_arn"]

    # Same environment again: found in ECR by its tag, nothing built.
    started = time.perf_counter()
    assert ensure_image(snap, echo=lines.append, **settings()) == uri  # type: ignore[arg-type]
    cache_check = time.perf_counter() - started
    assert emulator.calls.get("codebuild.StartBuild", 0) == before + 1
    assert find_image(settings()["region"], None, "cloudburst", tag(snap))
    assert cache_check < 5  # one DescribeImages call
    assert tag(snap) in {
        t for image in list_images(settings()["region"], None, "cloudburst") for t in image.get("imageTags", [])
    }


def test_one_package_changed_builds_a_new_image(emulator: Emulator) -> None:
    base = Snapshot(python="3.11", requirements=("pandas==2.2.0", f"zzz-unique=={time.time_ns()}"))
    first = ensure_image(base, echo=lambda _: None, **settings())  # type: ignore[arg-type]
    changed = Snapshot(python="3.11", requirements=("pandas==2.2.1", *base.requirements[1:]))
    second = ensure_image(changed, echo=lambda _: None, **settings())  # type: ignore[arg-type]
    assert first != second and emulator.builds[-2:] == [
        f"{first.split('@')[0]}:{tag(base)}",
        f"{second.split('@')[0]}:{tag(changed)}",
    ]


def test_env_build_command_saves_the_image(emulator: Emulator, tmp_path: pytest.TempPathFactory) -> None:
    import subprocess
    import sys

    reqs = tmp_path / "requirements.txt"  # type: ignore[operator]
    reqs.write_text(f"tblib==3.2.2\nzzz-unique=={time.time_ns()}\n")
    saved = userconfig.load()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "cloudburst.cli", "env", "build", "--requirements", str(reqs)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "CodeBuild build" in out and "image = " in out and "(saved)" in out
        assert userconfig.load()["image"].split("@")[0] == emulator.builds[-1].rsplit(":", 1)[0]
        assert "@sha256:" in userconfig.load()["image"]  # saved by digest
        shown = subprocess.run(
            [sys.executable, "-m", "cloudburst.cli", "env", "show", "--requirements", str(reqs), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert emulator.builds[-1].endswith(json.loads(shown)["tag"])
    finally:
        userconfig.save(saved)


@pytest.mark.skipif(docker_engine(), reason="a Docker engine here would build locally instead of CodeBuild")
def test_private_index_logins_reach_the_build_only_as_a_parameter(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://bot:t0ken-for-build@private.example.com/simple")
    snap = snapshot(_requirements_file(tmp_path))
    assert snap.private_hosts == ("private.example.com",)
    ensure_image(snap, echo=lambda _: None, **settings())  # type: ignore[arg-type]
    variables = emulator.gateway.build_variables[-1]  # type: ignore[union-attr]
    netrc_variable = next(v for v in variables if v["name"] == "CLOUDBURST_NETRC")
    parameter = netrc_variable["value"]
    assert netrc_variable["type"] == "PARAMETER_STORE" and parameter.startswith("/cloudburst/index/")
    assert "t0ken" not in json.dumps(variables)
    stored = boto3.client("ssm").get_parameter(Name=parameter, WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString"
    assert stored["Value"] == "machine private.example.com login bot password t0ken-for-build\n"
    name = parameter.rsplit("/", 1)[1]  # keyed: the name does not let anyone test guesses of the value
    assert name not in hashlib.sha256(stored["Value"].encode()).hexdigest()
    assert store_index_credentials(settings()["region"], None, stored["Value"]) == parameter  # and stable
    body = boto3.client("s3").get_object(Bucket=settings()["bucket"], Key=f"builds/{tag(snap)}.zip")
    context = zipfile.ZipFile(io.BytesIO(body["Body"].read()))
    for name in context.namelist():
        assert b"t0ken" not in context.read(name), name
    assert "--secret id=netrc" in context.read("buildspec.yml").decode()


def test_image_python_task_definition_names_the_bundle_and_the_logins_parameter(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cloudburst.backends.aws.fargate import ensure_task_definition
    from cloudburst.backends.aws.settings import FargateSettings

    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://bot:t0ken-for-workers@private.example.com/simple")
    snap = snapshot(_requirements_file(tmp_path))
    parameter = store_index_credentials(settings()["region"], None, index_credentials(snap))
    bundle = ensure_bundle(snap, region=settings()["region"], profile=None, bucket=settings()["bucket"])
    fargate = FargateSettings.resolve({"image": base_image(snap.python)})
    arn = ensure_task_definition(fargate, 1024, 2048, bundle=bundle, netrc_parameter=parameter)
    definition = boto3.client("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
    container = definition["containerDefinitions"][0]
    assert container["image"] == base_image(snap.python)  # by digest
    assert container["secrets"] == [{"name": "CLOUDBURST_NETRC", "valueFrom": parameter}]
    assert {"name": "CLOUDBURST_BUNDLE", "value": bundle} in container["environment"]
    assert "t0ken" not in json.dumps(definition, default=str)
    # the bundle is what the digest says, and holds no logins either
    location, digest = bundle.removeprefix("s3://").split("#")
    bucket, key = location.split("/", 1)
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert {"requirements.txt", "cloudburst/worker/loop.py", "cloudburst/backends/aws/bootstrap.py"} <= set(
        archive.namelist()
    )
    assert all(b"t0ken" not in archive.read(n) for n in archive.namelist())


def _requirements_file(folder: Path) -> Path:
    path = folder / "requirements.txt"
    path.write_text(f"tblib==3.2.2\nzzz-unique=={time.time_ns()}\n")
    return path


def test_env_build_stock_python_uploads_the_bundle_and_list_and_prune_see_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> str:
        command = [sys.executable, "-m", "cloudburst.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    reqs = _requirements_file(tmp_path)
    saved = userconfig.load()
    time.sleep(1.1)  # S3 times have one-second steps: this bundle is then the newest, not tied with another
    try:
        out = cli("env", "build", "--stock-python", "--requirements", str(reqs))
        assert "environment bundle uploaded" in out and "image = python (saved" in out
        assert userconfig.load()["image"] == "python"
        assert userconfig.load()["requirements"] == str(reqs.resolve())
        key = f"envs/{tag(snapshot(reqs))}.zip"
        listed = json.loads(cli("env", "list", "--json"))
        assert key in [b["Key"] for b in listed["bundles"]]
        assert "environment bundle uploaded" not in cli("env", "build", "--stock-python", "--requirements", str(reqs))
        before = len(listed["bundles"])
        out = cli("env", "prune", "--keep", "1")
        assert f"deleted {before - 1} bundle{'' if before == 2 else 's'}" in out
        assert [b["Key"] for b in json.loads(cli("env", "list", "--json"))["bundles"]] == [key]  # the newest stays
    finally:
        userconfig.save(saved)


def test_with_a_docker_engine_the_image_is_built_and_pushed_locally(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stand-in ``docker`` on PATH records what it is asked to do (no engine runs here)."""
    record = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "ARGS $*" >> {record}\n'
        'case "$1" in\n'
        f'  login) echo "STDIN $(cat)" >> {record} ;;\n'
        '  build) for a in "$@"; do case "$a" in id=netrc,src=*) '
        f'echo "SECRET $(cat "${{a#id=netrc,src=}}")" >> {record} ;; esac; done ;;\n'
        f'  push) "{sys.executable}" -c "$PUSH" "$2" ;;\n'  # the image reaches (emulated) ECR
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv(
        "PUSH",
        "import boto3, hashlib, json, sys\n"
        "repository, tag = sys.argv[1].split('/', 1)[1].rsplit(':', 1)\n"
        "layer = 'sha256:' + hashlib.sha256(tag.encode()).hexdigest()\n"
        "mt = 'application/vnd.docker.distribution.manifest.v2+json'\n"
        "manifest = json.dumps({'schemaVersion': 2, 'mediaType': mt, 'layers': [{'digest': layer}]})\n"
        "boto3.client('ecr').put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)\n",
    )
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://bot:t0ken-docker@private.example.com/simple")
    assert docker_engine()
    before = emulator.calls.get("codebuild.StartBuild", 0)
    snap = snapshot(_requirements_file(tmp_path))
    uri = ensure_image(snap, echo=lambda _: None, arch="arm64", **settings())  # type: ignore[arg-type]
    assert emulator.calls.get("codebuild.StartBuild", 0) == before  # built here, not in CodeBuild
    lines = [line for line in record.read_text().splitlines() if line != "ARGS info"]  # the engine checks
    assert lines[0].startswith("ARGS login --username AWS --password-stdin 123456789012.dkr.ecr.")
    assert lines[1].startswith("STDIN ") and len(lines[1]) > len("STDIN ")  # the ECR token, never an argument
    build = next(line for line in lines if line.startswith("ARGS build"))
    pushed = f"{uri.split('@')[0]}:{tag(snap, arch='arm64')}"
    assert f"--platform linux/arm64 -t {pushed} " in build
    secret_path = re.search(r"id=netrc,src=(\S+)", build).group(1)  # type: ignore[union-attr]
    context = build.rsplit(" ", 1)[1]
    assert not secret_path.startswith(context)  # the logins are not part of the context
    assert "SECRET machine private.example.com login bot password t0ken-docker" in lines
    assert "t0ken" not in build and lines[-1] == f"ARGS push {pushed}"
    assert not Path(secret_path).exists()  # removed with the build folder
