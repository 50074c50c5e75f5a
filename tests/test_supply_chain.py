"""The environment cannot be swapped (issue 14, points 5-7): images run by digest from an immutable
repository, bundles checked against the client's own digest, and what cloudburst installs pinned by hash.

Failure table rows (what an attacker able to write ``envs/`` or push to ECR tries, and what stops it):

================================================  ==================================================
bundle and its metadata replaced before a job     the client's digest differs: it uploads its own again
bundle replaced after the job resolved it         the worker refuses it (tests/test_failures.py)
a tag re-pushed with another image                tasks run ``repo@sha256:<digest>``: never the new one
a mutable ECR repository                          ``doctor`` flags it, ``setup`` makes it immutable
uv, boto3 or a locked package served altered      ``--require-hashes``: pip/uv refuse the wheel
================================================  ==================================================
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

import cloudburst
from cloudburst.backends.aws import bootstrap
from cloudburst.backends.aws.images import ensure_bundle
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator, network_env
from cloudburst.environment import pins
from cloudburst.environment.recipe import base_image, build_context, dockerfile, tag
from cloudburst.environment.snapshot import snapshot


def _settings() -> dict[str, str]:
    values = userconfig.load()
    return {"region": values["region"], "bucket": values["bucket"]}


def _requirements(folder: Path, extra: str = "") -> Path:
    path = folder / "requirements.txt"
    path.write_text(f"tblib==3.2.2\nzzz-unique=={time.time_ns()}\n{extra}")
    return path


def _tampered(body: bytes, marker: Path) -> bytes:
    """The bundle with a ``sitecustomize`` added: it would run in every worker process, and says so."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(body)) as original, zipfile.ZipFile(out, "w") as changed:
        for name in original.namelist():
            changed.writestr(name, original.read(name))
        changed.writestr("sitecustomize.py", f"open({str(marker)!r}, 'w').write('swapped')\n")
    return out.getvalue()


# ---------------------------------------------------------------------------- 6: the bundle's digest


def test_bundle_digest_is_the_clients_not_the_objects_metadata(emulator: Emulator, tmp_path: Path) -> None:
    snap = snapshot(_requirements(tmp_path))
    where = _settings()
    first = ensure_bundle(snap, region=where["region"], profile=None, bucket=where["bucket"], echo=lambda _: None)
    location, digest = first.removeprefix("s3://").split("#")
    bucket, key = location.split("/", 1)
    s3 = boto3.client("s3")
    forged = _tampered(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), tmp_path / "marker")
    forged_digest = hashlib.sha256(forged).hexdigest()
    s3.put_object(Bucket=bucket, Key=key, Body=forged, Metadata={"sha256": forged_digest})
    for remembered in (True, False):  # this machine built it before, or another machine did
        if not remembered:
            s3.put_object(Bucket=bucket, Key=key, Body=forged, Metadata={"sha256": forged_digest})
            for record in (Path(userconfig.cache_dir()) / "bundle-digests").glob("*"):
                record.unlink()
        again = ensure_bundle(snap, region=where["region"], profile=None, bucket=where["bucket"], echo=lambda _: None)
        assert again == first and forged_digest not in again  # the client's digest, never the metadata's
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == digest  # and its own bundle is back in place


def test_the_bundle_is_reproducible(tmp_path: Path) -> None:
    """The client can hash a bundle without trusting S3 only if building it twice gives the same bytes."""
    from cloudburst.backends.aws.images import _bundle

    snap = snapshot(_requirements(tmp_path))
    first = _bundle(snap, "x86_64")
    time.sleep(1.1)  # zip times have two-second steps: a later build must not differ by its file times
    assert _bundle(snap, "x86_64") == first


def whoami(x: int) -> tuple[int, str]:
    return x * 2, sys.prefix


def test_a_swapped_bundle_never_runs_on_a_worker(
    emulator: Emulator, stock_python: tuple[Path, Path], tmp_path: Path
) -> None:
    """The whole attack: the bundle and its metadata replaced between two jobs. Today's client took the
    digest from the metadata, so the worker checked the attacker's bundle against the attacker's hash."""
    requirements = tmp_path / "requirements.txt"  # its own bundle: a tag no other test uses
    requirements.write_text(stock_python[1].read_text() + f"packaging=={metadata.version('packaging')}\n")
    marker = tmp_path / "swapped"
    s3 = boto3.client("s3")
    with emulator.image(stock_python[0], network_env()):
        with cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements)) as ex:
            assert ex.submit(whoami, 1).result(timeout=240)[0] == 2
            bundle = ex._job.backend.bundle  # type: ignore[attr-defined]
        bucket, key = bundle.removeprefix("s3://").split("#")[0].split("/", 1)
        forged = _tampered(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), marker)
        s3.put_object(Bucket=bucket, Key=key, Body=forged, Metadata={"sha256": hashlib.sha256(forged).hexdigest()})
        with cloudburst.Executor(1, backend="fargate", image="python", requirements=str(requirements)) as ex:
            assert ex.submit(whoami, 5).result(timeout=240)[0] == 10
            assert ex._job.backend.bundle == bundle  # type: ignore[attr-defined]
    assert not marker.exists(), "a worker ran the swapped bundle"


# ---------------------------------------------------------------------------- 7: pinned supply chain


def test_bootstrap_installs_uv_and_boto3_pinned_by_hash() -> None:
    source = bootstrap.script()
    namespace: dict[str, object] = {}
    exec(compile(source.replace('\nif __name__ == "__main__":\n    main()\n', "\n"), "bootstrap", "exec"), namespace)
    for name, pinned in (("UV_PINS", pins.UV), ("BOTO3_PINS", pins.BOTO3)):
        text = namespace[name]
        assert isinstance(text, str) and text == pins.requirements_text(pinned)
        for package, (version, hashes) in pinned.items():
            line = next(line for line in text.splitlines() if line.startswith(f"{package}=={version} "))
            assert all(f"--hash=sha256:{h}" in line for h in hashes) and hashes
    assert "--require-hashes" in source and 'UV_REQUIREMENT = "uv' not in source
    assert set(pins.BOTO3) >= {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}


def test_uv_pins_cover_both_fargate_cpus() -> None:
    """x86_64 and aarch64 manylinux wheels of uv: three hashes at least (pure-Python pins need one)."""
    version, hashes = pins.UV["uv"]
    assert version and len(hashes) >= 2 and all(len(h) == 64 for h in hashes)


def test_the_task_definition_runs_the_pinned_bootstrap(emulator: Emulator, tmp_path: Path) -> None:
    from cloudburst.backends.aws.fargate import ensure_task_definition
    from cloudburst.backends.aws.settings import FargateSettings

    snap = snapshot(_requirements(tmp_path))
    where = _settings()
    bundle = ensure_bundle(snap, region=where["region"], profile=None, bucket=where["bucket"], echo=lambda _: None)
    fargate = FargateSettings.resolve({"image": base_image(snap.python)})
    arn = ensure_task_definition(fargate, 1024, 2048, bundle=bundle)
    container = boto3.client("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"][
        "containerDefinitions"
    ][0]
    assert container["command"][2] == bootstrap.script()
    assert repr(pins.requirements_text(pins.UV)) in container["command"][2]
    assert container["image"].endswith(f"-slim-bookworm@{pins.BASE_IMAGES[snap.python]}")


def test_base_image_by_digest_and_the_digest_in_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = snapshot()
    image = base_image(snap.python)
    assert image == f"public.ecr.aws/docker/library/python:{snap.python}-slim-bookworm@{pins.BASE_IMAGES[snap.python]}"
    assert f"FROM {image}\n" in dockerfile(snap)
    before = tag(snap)
    monkeypatch.setitem(pins.BASE_IMAGES, snap.python, "sha256:" + "0" * 64)  # a new base image release
    assert tag(snap) != before


def test_a_python_without_a_pinned_base_image_is_refused() -> None:
    with pytest.raises(cloudburst.ConfigurationError, match=r"no pinned digest of the python:3\.9-slim-bookworm"):
        base_image("3.9")


def test_dockerfile_installs_uv_pinned_by_hash(tmp_path: Path) -> None:
    snap = snapshot(_requirements(tmp_path))
    recipe = dockerfile(snap)
    assert "RUN pip install --no-cache-dir --no-deps --require-hashes -r /cloudburst/uv-requirements.txt" in recipe
    assert "pip install --no-cache-dir uv\n" not in recipe
    context = build_context(snap, tmp_path / "context")
    assert (context / "uv-requirements.txt").read_text() == pins.requirements_text(pins.UV)


# ---------------------------------------------------------------------------- 7: the user's own hashes

_SIX = "sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"
_JMESPATH = "sha256:a5663118de4908c91729bea0acadca56526eb2698e83de10cd116ae0f4e97c64"


def test_hashes_in_a_requirements_file_are_kept_and_required(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"--require-hashes\nsix==1.17.0 \\\n    --hash={_SIX}\njmespath==1.1.0 --hash {_JMESPATH}\n")
    snap = snapshot(reqs)
    assert dict(snap.hashes) == {"six==1.17.0": (_SIX,), "jmespath==1.1.0": (_JMESPATH,)}
    text = snap.requirements_txt()
    assert f"six==1.17.0 --hash={_SIX}" in text.splitlines() and f"jmespath==1.1.0 --hash={_JMESPATH}" in text
    assert not any("--require-hashes is not carried over" in n for n in snap.notes)
    # the worker loop's own packages are not in this lock: hashes are checked where given, not required
    assert snap.runtime and not snap.require_hashes and "--require-hashes" not in text
    assert any("--require-hashes is off: no hashes for" in n for n in snap.notes)
    # with every package workers install hashed, --require-hashes is on
    names = [re.split(r"[=<>]", r)[0] for r in snap.runtime]
    reqs.write_text(reqs.read_text() + "".join(f"{n}=={metadata.version(n)} --hash=sha256:{'1' * 64}\n" for n in names))
    full = snapshot(reqs)
    assert not full.runtime and full.require_hashes
    assert full.requirements_txt().startswith("--require-hashes\n")
    assert any("enforced on workers (--require-hashes)" in n for n in full.notes)
    assert tag(full) != tag(snap)


def test_hashes_in_a_uv_lock_are_kept(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text(
        'version = 1\nrequires-python = ">=3.10"\n\n'
        '[[package]]\nname = "six"\nversion = "1.17.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        f'sdist = {{ url = "https://files.example/six-1.17.0.tar.gz", hash = "sha256:{"2" * 64}" }}\n'
        f'wheels = [\n    {{ url = "https://files.example/six-1.17.0-py2.py3-none-any.whl", hash = "{_SIX}" }},\n]\n'
    )
    snap = snapshot(lock)
    assert dict(snap.hashes) == {"six==1.17.0": (f"sha256:{'2' * 64}", _SIX)}
    assert f"six==1.17.0 --hash=sha256:{'2' * 64} --hash={_SIX}" in snap.requirements_txt().splitlines()


def test_a_locked_package_with_other_bytes_is_refused_by_the_install(tmp_path: Path) -> None:
    """What workers run (uv with the written requirements file) refuses a wheel whose hash differs."""
    import shutil
    import subprocess

    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"--require-hashes\nsix==1.17.0 --hash=sha256:{'3' * 64}\n")
    line = next(line for line in snapshot(reqs).requirements_txt().splitlines() if line.startswith("six=="))
    written = tmp_path / "written.txt"
    written.write_text(f"{line}\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    result = subprocess.run(
        [uv, "pip", "install", "--python", str(tmp_path / "venv" / "bin" / "python"), "--no-deps", "-r", str(written)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0 and "hash" in result.stderr.lower(), result.stderr


# ---------------------------------------------------------------------------- 5: images by digest, tags immutable


def test_setup_makes_the_repository_immutable_and_doctor_flags_a_mutable_one(emulator: Emulator) -> None:
    from cloudburst.backends.aws.setup import doctor, setup

    ecr = boto3.client("ecr")
    region = userconfig.load()["region"]
    repository = userconfig.load()["ecr_repository"]

    def mutability() -> str:
        return str(ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]["imageTagMutability"])

    assert mutability() == "IMMUTABLE"  # as setup made it
    ecr.put_image_tag_mutability(repositoryName=repository, imageTagMutability="MUTABLE")
    try:
        report = doctor(region=region, echo=lambda _: None)
        flagged = [s for s in report.problems if s.name == f"ECR repository {repository}"]
        assert flagged and "not tags immutable" in flagged[0].detail and "cloudburst setup" in flagged[0].fix
        assert mutability() == "MUTABLE"  # doctor changes nothing
        setup(region=region, echo=lambda _: None)
        assert mutability() == "IMMUTABLE"
    finally:
        ecr.put_image_tag_mutability(repositoryName=repository, imageTagMutability="IMMUTABLE")


def test_images_are_recorded_and_run_by_digest_and_a_tag_cannot_be_repushed(emulator: Emulator) -> None:
    from cloudburst.backends.aws.fargate import ensure_task_definition
    from cloudburst.backends.aws.images import ensure_image
    from cloudburst.backends.aws.settings import FargateSettings
    from cloudburst.environment.snapshot import Snapshot

    values = userconfig.load()
    snap = Snapshot(python="3.11", requirements=(f"zzz-unique=={time.time_ns()}",))
    kwargs: dict[str, Any] = {
        "region": values["region"],
        "profile": None,
        "repository": values["ecr_repository"],
        "bucket": values["bucket"],
        "role_arn": values["build_role_arn"],
        "echo": lambda _: None,
    }
    uri = ensure_image(snap, **kwargs)
    ecr = boto3.client("ecr")
    found = ecr.describe_images(repositoryName=values["ecr_repository"], imageIds=[{"imageTag": tag(snap)}])
    digest = found["imageDetails"][0]["imageDigest"]
    assert uri.endswith(f"/{values['ecr_repository']}@{digest}") and digest.startswith("sha256:")
    # the cache hit answers the same digest
    assert ensure_image(snap, **kwargs) == uri
    # a replacement pushed under the same tag is refused by the immutable repository
    replacement = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [{"digest": "sha256:" + "e" * 64}],  # another image
    }
    manifest = json.dumps(replacement)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        ecr.put_image(repositoryName=values["ecr_repository"], imageManifest=manifest, imageTag=tag(snap))
    # AWS answers ImageTagAlreadyExistsException; moto 5.2 ImageAlreadyExistsException for the same refusal
    assert refused.value.response["Error"]["Code"] in ("ImageTagAlreadyExistsException", "ImageAlreadyExistsException")
    assert ensure_image(snap, **kwargs) == uri  # the tag still names the first image
    # and tasks name the digest, never the tag
    arn = ensure_task_definition(FargateSettings.resolve({"image": uri}), 1024, 2048)
    definition = boto3.client("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
    assert definition["containerDefinitions"][0]["image"] == uri and f":{tag(snap)}" not in uri
