"""Worker images in ECR, tagged by the hash of the environment they hold.

::

    ensure_image(snapshot)  ─► tag = hash(lock, Python, base image digest, arch, cloudburst)
        ECR has repo:tag? ─── yes ─► reuse it by digest, repo@sha256:... (one DescribeImages call)
                          └── no ──► build context ─► a local Docker engine: build and push
                                                   └► else AWS CodeBuild: context to S3, build
                                                      started, its log streamed, image pushed
    ensure_bundle(snapshot) ─► the no-build fallback (image="python"): the same context, zipped, in
        s3://bucket/envs/<tag>.zip (one HeadObject when it is there); workers install it at start

Index logins (see ``environment.index_credentials``) are kept in the SecureString parameter
``/cloudburst/index/<hash>``; builds and workers read them from there, so they are in no image, task
definition, build log or environment listing.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...config.userconfig import cache_dir
from ...core import scratch
from ...environment.recipe import build_context, tag
from ...environment.snapshot import Snapshot, index_credentials
from ...errors import CloudError
from .bootstrap import NETRC_VARIABLE
from .clients import client, error_code, translate
from .owner import s3_client

__all__ = [
    "BUILDSPEC",
    "BUILD_PROJECT",
    "NETRC_PREFIX",
    "docker_engine",
    "ensure_bundle",
    "ensure_image",
    "find_image",
    "list_bundles",
    "list_images",
    "prune_bundles",
    "prune_images",
    "store_index_credentials",
]

BUILD_PROJECT = "cloudburst-image-builder"
NETRC_PREFIX = "/cloudburst/index"
BUILDSPEC = """version: 0.2
phases:
  pre_build:
    commands:
      - aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin ${IMAGE_URI%%/*}
      - umask 077 && printf '%s' "${NETRC_VARIABLE:-}" > /tmp/cloudburst-netrc
  build:
    commands:
      - DOCKER_BUILDKIT=1 docker build --secret id=netrc,src=/tmp/cloudburst-netrc --platform $PLATFORM -t $IMAGE_URI .
  post_build:
    commands:
      - docker push $IMAGE_URI
""".replace("NETRC_VARIABLE", NETRC_VARIABLE)  # the index logins, as the bootstrap gets them too


def store_index_credentials(region: str | None, profile: str | None, netrc_text: str) -> str:
    """Keep the index logins in an encrypted parameter named by their keyed hash; returns its name ("" for
    none).

    Named by content, a parameter never changes: a job (or build) started with one set of logins keeps
    them while another project in the account stores others. The hash is keyed with a random secret of
    this machine's, so the name (visible in task definitions to those who cannot decrypt the value) says
    nothing about the logins. ``cloudburst teardown`` removes them all."""
    if not netrc_text:
        return ""
    import hashlib
    import hmac

    digest = hmac.new(_naming_key(), netrc_text.encode(), hashlib.sha256).hexdigest()[:24]
    name = f"{NETRC_PREFIX}/{digest}"
    ssm: Any = client("ssm", region, profile)
    try:
        ssm.put_parameter(
            Name=name,
            Value=netrc_text,
            Type="SecureString",
            Description="cloudburst: package index logins, read by image builds and workers",
            Tags=[{"Key": "cloudburst", "Value": "true"}],
        )
    except Exception as exc:
        if error_code(exc) != "ParameterAlreadyExists":
            with translate("SSM", "PutParameter", name):
                raise
    return name


def _naming_key() -> bytes:
    """A random key of this machine's (made once, readable by its user only) for naming secrets."""
    import secrets

    path = cache_dir() / "naming-key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return bytes.fromhex(key)


def ensure_bundle(
    snap: Snapshot,
    *,
    region: str | None,
    profile: str | None,
    bucket: str,
    arch: str = "x86_64",
    echo: Callable[[str], None] = print,
) -> str:
    """The no-build fallback's environment bundle: ``s3://bucket/envs/<tag>.zip#<sha256>``, uploaded once.

    The digest is this client's own: the sha256 of the bundle it built (remembered in its private cache
    folder, else built again: the zip is byte-for-byte reproducible). The object's metadata is only
    compared with it, to skip the upload; an object that does not match (changed by anyone able to write
    ``envs/``, metadata included) is replaced, and a worker refuses any bundle whose bytes differ."""
    image_tag = tag(snap, arch=arch)
    key = f"envs/{image_tag}.zip"
    s3: Any = s3_client(bucket, region, profile)
    digest, body = _remembered_digest(image_tag), b""
    if not digest:
        body = _bundle(snap, arch)
        digest = hashlib.sha256(body).hexdigest()
    if _stored_digest(s3, bucket, key) == digest:
        _remember_digest(image_tag, digest)
        return f"s3://{bucket}/{key}#{digest}"
    if not body:
        body = _bundle(snap, arch)
        digest = hashlib.sha256(body).hexdigest()
    with translate("S3", "PutObject", f"s3://{bucket}/{key}"):
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"sha256": digest})
    _remember_digest(image_tag, digest)
    echo(
        f"cloudburst: environment bundle uploaded ({len(body) / 1e6:.1f} MB, {len(snap.requirements)} packages); "
        "workers on the stock Python image install it as they start"
    )
    return f"s3://{bucket}/{key}#{digest}"


def _bundle(snap: Snapshot, arch: str) -> bytes:
    """The bundle's bytes: the build context without its Dockerfile, zipped reproducibly."""
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=scratch.own()) as folder:
        context = build_context(snap, Path(folder) / "context", arch=arch)
        (context / "Dockerfile").unlink()
        return _zip(context, buildspec=False)


def _stored_digest(s3: Any, bucket: str, key: str) -> str:
    """What the stored bundle's metadata claims ("" when there is none): compared, never trusted."""
    try:
        return str(s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256", ""))
    except Exception as exc:
        if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            with translate("S3", "HeadObject", f"s3://{bucket}/{key}"):
                raise
        return ""


def _digest_record(image_tag: str) -> Path:
    return cache_dir() / "bundle-digests" / image_tag


def _remembered_digest(image_tag: str) -> str:
    """The sha256 this machine computed for the bundle of ``image_tag`` ("" if it never built it)."""
    try:
        text = _digest_record(image_tag).read_text().strip()
    except OSError:
        return ""
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else ""


def _remember_digest(image_tag: str, digest: str) -> None:
    path = _digest_record(image_tag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(digest)
    except OSError:
        pass  # only a shortcut: the next job builds the bundle again to know its digest


def _repository_uri(region: str | None, profile: str | None, repository: str) -> str:
    ecr: Any = client("ecr", region, profile)
    with translate("ECR", "DescribeRepositories", repository):
        return str(ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]["repositoryUri"])


def find_image(region: str | None, profile: str | None, repository: str, image_tag: str) -> str:
    """The digest (``sha256:...``) of ``repository:image_tag`` in ECR, "" when it is not there (the cache
    check: one request)."""
    ecr: Any = client("ecr", region, profile)
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": image_tag}])["imageDetails"]
    except Exception as exc:
        if error_code(exc) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return ""
        raise
    return str(found[0]["imageDigest"]) if found else ""


def docker_engine() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_image(
    snap: Snapshot,
    *,
    region: str | None,
    profile: str | None,
    repository: str,
    bucket: str,
    role_arn: str,
    arch: str = "x86_64",
    echo: Callable[[str], None] = print,
) -> str:
    """The image for this environment, by digest (``repo@sha256:...``): found in ECR by its tag, else built
    and pushed. Tasks run the digest, so an image pushed later under the same tag is never run."""
    image_tag = tag(snap, arch=arch)
    repository_uri = _repository_uri(region, profile, repository)
    uri = f"{repository_uri}:{image_tag}"
    digest = find_image(region, profile, repository, image_tag)
    if digest:
        return f"{repository_uri}@{digest}"
    echo(f"cloudburst: building the worker image {image_tag} ({len(snap.requirements)} packages, Python {snap.python})")
    netrc_text = index_credentials(snap) if snap.private_hosts else ""
    with tempfile.TemporaryDirectory(prefix="build-", dir=scratch.own()) as folder:
        context = build_context(snap, Path(folder) / "context", arch=arch)
        if docker_engine():
            secret = Path(folder) / "netrc"  # outside the context: never sent as part of it
            secret.touch(mode=0o600)
            secret.write_text(netrc_text)
            _docker_build(context, uri, arch, region, profile, secret)
        else:
            parameter = store_index_credentials(region, profile, netrc_text)
            _codebuild(context, uri, image_tag, arch, region, profile, bucket, role_arn, echo, parameter)
    digest = find_image(region, profile, repository, image_tag)
    if not digest:
        raise CloudError(
            f"the image build reported success, but ECR has no {uri}: run `cloudburst env build` again",
            service="ECR",
            operation="DescribeImages",
            code="ImageNotFoundException",
        )
    echo(f"cloudburst: worker image ready: {repository_uri}@{digest} ({image_tag})")
    return f"{repository_uri}@{digest}"


def _docker_build(context: Path, uri: str, arch: str, region: str | None, profile: str | None, secret: Path) -> None:
    import base64

    ecr: Any = client("ecr", region, profile)
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    registry = uri.split("/", 1)[0]
    platform = "linux/arm64" if arch == "arm64" else "linux/amd64"
    subprocess.run(
        ["docker", "login", "--username", user, "--password-stdin", registry], input=password.encode(), check=True
    )
    subprocess.run(
        ["docker", "build", "--secret", f"id=netrc,src={secret}", "--platform", platform, "-t", uri, str(context)],
        check=True,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    subprocess.run(["docker", "push", uri], check=True)


def _zip(context: Path, *, buildspec: bool = True) -> bytes:
    """The context zipped reproducibly: names sorted, one fixed time and mode, so the same files give the
    same bytes (and the same sha256) on every build."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        files = [(p.relative_to(context).as_posix(), p.read_bytes()) for p in sorted(context.rglob("*")) if p.is_file()]
        if buildspec:
            files.append(("buildspec.yml", BUILDSPEC.encode()))
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _codebuild(
    context: Path,
    uri: str,
    image_tag: str,
    arch: str,
    region: str | None,
    profile: str | None,
    bucket: str,
    role_arn: str,
    echo: Callable[[str], None],
    netrc_parameter: str = "",
) -> None:
    s3: Any = s3_client(bucket, region, profile)
    key = f"builds/{image_tag}.zip"
    with translate("S3", "PutObject", f"s3://{bucket}/{key}"):
        s3.put_object(Bucket=bucket, Key=key, Body=_zip(context))
    codebuild: Any = client("codebuild", region, profile)
    environment = {
        "type": "ARM_CONTAINER" if arch == "arm64" else "LINUX_CONTAINER",
        "image": "aws/codebuild/amazonlinux2-aarch64-standard:3.0"
        if arch == "arm64"
        else "aws/codebuild/amazonlinux2-x86_64-standard:5.0",
        "computeType": "BUILD_GENERAL1_SMALL",
        "privilegedMode": True,
    }
    try:
        codebuild.batch_get_projects(names=[BUILD_PROJECT])["projects"][0]
    except (IndexError, KeyError):
        with translate("CodeBuild", "CreateProject", BUILD_PROJECT):
            codebuild.create_project(
                name=BUILD_PROJECT,
                source={"type": "S3", "location": f"{bucket}/{key}"},
                artifacts={"type": "NO_ARTIFACTS"},
                environment=environment,
                serviceRole=role_arn,
                tags=[{"key": "cloudburst", "value": "true"}],
            )
    with translate("CodeBuild", "StartBuild", BUILD_PROJECT):
        build = codebuild.start_build(
            projectName=BUILD_PROJECT,
            sourceTypeOverride="S3",
            sourceLocationOverride=f"{bucket}/{key}",
            environmentTypeOverride=environment["type"],
            imageOverride=environment["image"],
            environmentVariablesOverride=[
                {"name": "IMAGE_URI", "value": uri, "type": "PLAINTEXT"},
                {"name": "PLATFORM", "value": "linux/arm64" if arch == "arm64" else "linux/amd64", "type": "PLAINTEXT"},
            ]
            + (  # CodeBuild reads the parameter itself: the logins never appear in the build's settings
                [{"name": NETRC_VARIABLE, "value": netrc_parameter, "type": "PARAMETER_STORE"}]
                if netrc_parameter
                else []
            ),
        )["build"]
    echo(f"cloudburst: CodeBuild build {build['id']} started")
    _follow(codebuild, region, profile, build["id"], echo)


#: CodeBuild's phases, in order
_PHASES = [
    "SUBMITTED",
    "QUEUED",
    "PROVISIONING",
    "DOWNLOAD_SOURCE",
    "INSTALL",
    "PRE_BUILD",
    "BUILD",
    "POST_BUILD",
    "UPLOAD_ARTIFACTS",
    "FINALIZING",
    "COMPLETED",
]


def _follow(
    codebuild: Any, region: str | None, profile: str | None, build_id: str, echo: Callable[[str], None]
) -> None:
    """Wait for a build, printing its phases (step, time so far) and its log as they come."""
    logs: Any = client("logs", region, profile)
    phase, seen_token = "", None
    started = time.monotonic()
    while True:
        build = codebuild.batch_get_builds(ids=[build_id])["builds"][0]
        if build.get("currentPhase") != phase:
            phase = build.get("currentPhase", "")
            step = _PHASES.index(phase) + 1 if phase in _PHASES else len(_PHASES)
            elapsed = int(time.monotonic() - started)
            echo(
                f"cloudburst: image build [{step}/{len(_PHASES)}] {phase.lower().replace('_', ' ')} "
                f"({'took' if phase == 'COMPLETED' else 'so far'} {elapsed // 60}:{elapsed % 60:02d})"
            )
        where = build.get("logs", {})
        if where.get("groupName") and where.get("streamName"):
            try:
                kwargs = {
                    "logGroupName": where["groupName"],
                    "logStreamName": where["streamName"],
                    "startFromHead": True,
                }
                if seen_token:
                    kwargs["nextToken"] = seen_token
                page = logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    echo(f"  | {event['message'].rstrip()}")
                seen_token = page.get("nextForwardToken")
            except Exception:
                pass  # the log stream appears a little after the build starts
        status = build.get("buildStatus")
        if status == "SUCCEEDED":
            return
        if status in ("FAILED", "FAULT", "STOPPED", "TIMED_OUT"):
            raise CloudError(
                f"the image build {build_id} ended {status}; its log is above (or in CloudWatch group "
                f"{where.get('groupName', '/aws/codebuild/' + BUILD_PROJECT)})",
                service="CodeBuild",
                operation="StartBuild",
                code=str(status),
            )
        time.sleep(3)


def list_images(region: str | None, profile: str | None, repository: str) -> list[dict[str, Any]]:
    ecr: Any = client("ecr", region, profile)
    found: list[dict[str, Any]] = []
    for page in ecr.get_paginator("describe_images").paginate(repositoryName=repository):
        found += page.get("imageDetails", [])
    return sorted(found, key=lambda i: str(i.get("imagePushedAt", "")), reverse=True)


def prune_images(region: str | None, profile: str | None, repository: str, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest images; returns the deleted tags."""
    images = list_images(region, profile, repository)
    doomed = images[keep:]
    if not doomed:
        return []
    ecr: Any = client("ecr", region, profile)
    ids = [{"imageDigest": i["imageDigest"]} for i in doomed]
    ecr.batch_delete_image(repositoryName=repository, imageIds=ids)
    return [",".join(i.get("imageTags", [])) or i["imageDigest"] for i in doomed]


def list_bundles(region: str | None, profile: str | None, bucket: str) -> list[dict[str, Any]]:
    """The no-build fallback's environment bundles in ``s3://bucket/envs/``, newest first."""
    s3: Any = s3_client(bucket, region, profile)
    found: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="envs/"):
        found += page.get("Contents", [])
    return sorted(found, key=lambda o: str(o.get("LastModified", "")), reverse=True)


def prune_bundles(region: str | None, profile: str | None, bucket: str, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest environment bundles; returns the deleted keys."""
    doomed = [o["Key"] for o in list_bundles(region, profile, bucket)[keep:]]
    s3: Any = s3_client(bucket, region, profile)
    for start in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in doomed[start : start + 1000]]})
    return doomed
