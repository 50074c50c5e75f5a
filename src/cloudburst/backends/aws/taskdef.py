"""What a Fargate worker runs: its image (found, built, or the stock Python image with a bundle) and the
task definition for its shape, registered once per (image, cpu, memory, arch, disk) and found again by its
content hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ...environment.recipe import base_image
from ...environment.snapshot import index_credentials, snapshot
from ...environment.wheels import require_arm64_wheels
from ...errors import NotSetUpError
from ...log import say
from . import bootstrap
from .clients import client, error_code, translate
from .images import ensure_bundle, ensure_image, store_index_credentials
from .settings import FargateSettings

__all__ = ["CONTAINER", "JOB_TAG", "LOG_PREFIX", "ensure_task_definition", "worker_environment"]

CONTAINER = "worker"
JOB_TAG = "cloudburst:job"
LOG_PREFIX = "cloudburst"


def worker_environment(settings: FargateSettings) -> tuple[str, str, str]:
    """``(image, bundle, index-login parameter)`` when no image is named (the user writes no Dockerfile).

    No image: this environment's image, found in ECR by its tag or built. ``image="python"``: the stock
    Python image, with the environment bundle (uploaded once) installed by each worker as it starts.
    """

    def echo(line: str) -> None:
        say(line)

    snap = snapshot(settings.requirements or None, arch=settings.arch)
    if settings.arch == "arm64":
        require_arm64_wheels(snap)
    if settings.image == "python":
        bundle = ensure_bundle(
            snap,
            region=settings.region,
            profile=settings.profile,
            bucket=settings.bucket,
            arch=settings.arch,
            echo=echo,
        )
        logins = index_credentials(snap) if snap.private_hosts else ""
        return base_image(snap.python), bundle, store_index_credentials(settings.region, settings.profile, logins)
    if not settings.build_role_arn:
        raise NotSetUpError(
            "backend='fargate' has no worker image, and no role to build one: run `cloudburst setup` (it adds "
            "the image build role), pass image='<uri>' naming an image with cloudburst and your packages, or "
            "image='python' to install your packages as each worker starts"
        )
    image = ensure_image(
        snap,
        region=settings.region,
        profile=settings.profile,
        repository=settings.ecr_repository,
        bucket=settings.bucket,
        role_arn=settings.build_role_arn,
        arch=settings.arch,
        echo=echo,
    )
    return image, "", ""


def ensure_task_definition(
    settings: FargateSettings, cpu_units: int, memory_mib: int, *, bundle: str = "", netrc_parameter: str = ""
) -> str:
    """The task definition for this worker shape: registered once, found again by its content hash.

    With an environment ``bundle`` (the no-build fallback) the container runs the bootstrap, which
    installs the bundle and then the worker loop; index logins come from ``netrc_parameter`` as an ECS
    secret, resolved by ECS when the task starts."""
    spec: dict[str, Any] = {
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": str(cpu_units),
        "memory": str(memory_mib),
        "executionRoleArn": settings.execution_role_arn,
        "runtimePlatform": {
            "cpuArchitecture": "ARM64" if settings.arch == "arm64" else "X86_64",
            "operatingSystemFamily": "LINUX",
        },
        "containerDefinitions": [_container(settings, memory_mib, bundle, netrc_parameter)],
    }
    # No taskRoleArn: each job's own role is passed with RunTask (overrides.taskRoleArn).
    if settings.ephemeral_storage > 20:
        spec["ephemeralStorage"] = {"sizeInGiB": settings.ephemeral_storage}
    return _registered(settings, spec)


def _container(settings: FargateSettings, memory_mib: int, bundle: str, netrc_parameter: str) -> dict[str, Any]:
    """The worker's container definition: the worker loop, or the bootstrap that installs ``bundle`` first."""
    command = ["python", "-m", "cloudburst.worker"]
    if bundle:
        command = ["python", "-c", bootstrap.script()]  # with the uv and boto3 pins written in
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "essential": True,
        "command": command,
        "memory": memory_mib,  # the task-level value is what counts; moto needs one here too
        "stopTimeout": 120,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": settings.log_group,
                "awslogs-region": settings.region or client("ecs", settings.region, settings.profile).meta.region_name,
                "awslogs-stream-prefix": LOG_PREFIX,
            },
        },
    }
    if bundle:
        container["environment"] = [{"name": bootstrap.BUNDLE_VARIABLE, "value": bundle}]
    secrets = [{"name": bootstrap.NETRC_VARIABLE, "valueFrom": netrc_parameter}] if netrc_parameter else []
    # The user's secrets= too: ECS reads them as the task starts, so they are in no RunTask override.
    secrets += [{"name": k, "valueFrom": v.removeprefix("ssm:")} for k, v in sorted(settings.secrets.items())]
    if secrets:
        container["secrets"] = secrets
    return container


def _registered(settings: FargateSettings, spec: dict[str, Any]) -> str:
    """The ARN of the task definition ``spec``: this process's, ECS's own (found by its content hash), or new."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
    family = f"cloudburst-{digest}"
    ecs: Any = client("ecs", settings.region, settings.profile)
    where = (ecs.meta.endpoint_url, ecs.meta.region_name, family)  # one cache entry per account endpoint
    cached = _TASK_DEFINITIONS.get(where)
    if cached:
        return cached
    try:
        found = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
        arn = str(found["taskDefinitionArn"]) if found.get("status") == "ACTIVE" else ""
    except Exception as exc:
        if error_code(exc) not in ("ClientException", "InvalidParameterException", "ResourceNotFoundException"):
            with translate("ECS", "DescribeTaskDefinition", family):
                raise
        arn = ""
    if not arn:
        with translate("ECS", "RegisterTaskDefinition", family):
            made = ecs.register_task_definition(family=family, tags=[{"key": "cloudburst", "value": "true"}], **spec)
        arn = str(made["taskDefinition"]["taskDefinitionArn"])
    _TASK_DEFINITIONS[where] = arn
    return arn


_TASK_DEFINITIONS: dict[tuple[str, str, str], str] = {}
