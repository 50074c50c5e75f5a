"""``teardown``: remove what setup made, found by its tag ``cloudburst=true``, and nothing else."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ....config import userconfig
from ....errors import CloudError
from ..cachestore import CACHE_PARAMETERS
from ..clients import error_code, translate
from ..images import BUILD_PROJECT
from ..job_roles import delete_job_role
from ..kms import DELETION_WINDOW_DAYS, describe_key, find_alias, is_ours, retire_key
from ..owner import pin, s3_client
from ..policies import BUILD_LOG_GROUP, JOB_ROLE_PATH
from .context import TAG, Context, Report, Step
from .roles import delete_role

__all__ = ["teardown"]

#: what teardown found: (kind, name, remover)
Found = tuple[str, str, Callable[[], object]]


def teardown(
    *,
    region: str | None = None,
    profile: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    echo: Callable[[str], None] = print,
) -> Report:
    """Remove what setup made, found by its tag ``cloudburst=true``; nothing else is touched."""
    config = userconfig.load()
    ctx = Context(region or userconfig.lookup("region").value, profile or userconfig.lookup("profile").value)
    found = _tagged_resources(ctx)
    report = Report(echo=echo)
    theirs = _keys(ctx, str(config.get("kms_key") or ""), found)
    for arn in theirs:
        report.add(Step(f"KMS key {arn}", "kept", "yours (not made by setup): left alone"))
    if not found:
        echo(f"Nothing of cloudburst's found in {ctx.region}.")
        return report
    listing = "\n".join(f"  {kind} {name}" for kind, name, _ in found)
    if confirm is not None and not confirm(f"Delete these, and every job's data in them?\n{listing}\n"):
        raise CloudError("teardown cancelled; nothing was deleted", service="cloudburst", operation="teardown")
    for kind, name, remove in found:
        with translate("cloudburst", "teardown", f"{kind} {name}"):
            remove()
        report.add(Step(f"{kind} {name}", "removed"))
    for key in (
        "bucket",
        "cluster",
        "subnets",
        "security_groups",
        "execution_role_arn",
        "task_role_arn",
        "build_role_arn",
        "worker_boundary_arn",
        "kms_key",
    ):
        config.pop(key, None)
    userconfig.save(config)
    return report


def _tagged_resources(ctx: Context) -> list[Found]:
    """(kind, name, remover) for every resource in this region that carries cloudburst's tag."""
    return _tagged_storage(ctx) + _tagged_compute(ctx) + _tagged_access(ctx)


def _tagged_storage(ctx: Context) -> list[Found]:
    """The bucket and the image repository."""
    out: list[Found] = []
    ecr = ctx.client("ecr")
    s3 = s3_client(ctx.bucket, ctx.region, ctx.profile, owner=ctx.account)
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        if not name.endswith(f"-{ctx.region}"):
            continue  # S3 lists every region's buckets: only this region's are torn down
        pin(name, ctx.account)  # ListBuckets lists only this account's; each later request says so
        try:
            tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
        except Exception:
            continue
        if TAG in tags:
            out.append(("bucket", name, functools.partial(_delete_bucket, s3, name)))
    for repo in ecr.describe_repositories().get("repositories", []):
        tags = ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"]).get("tags", [])
        if TAG in tags:
            remove = functools.partial(ecr.delete_repository, repositoryName=repo["repositoryName"], force=True)
            out.append(("ECR repository", repo["repositoryName"], remove))
    return out


def _tagged_compute(ctx: Context) -> list[Found]:
    """The cluster, the log groups, the security group and the image build project."""
    out: list[Found] = []
    ecs, logs, ec2, codebuild = (ctx.client(s) for s in ("ecs", "logs", "ec2", "codebuild"))
    clusters = ecs.list_clusters().get("clusterArns", [])
    if clusters:
        for cluster in ecs.describe_clusters(clusters=clusters, include=["TAGS"]).get("clusters", []):
            tags = {t["key"]: t["value"] for t in cluster.get("tags", [])}
            if tags.get("cloudburst") == "true" and cluster.get("status") == "ACTIVE":
                out.append(("ECS cluster", cluster["clusterName"], functools.partial(_delete_cluster, ecs, cluster)))
    groups = [
        g
        for prefix in ("/cloudburst", BUILD_LOG_GROUP)
        for g in logs.describe_log_groups(logGroupNamePrefix=prefix).get("logGroups", [])
    ]
    for group in groups:
        tags = logs.list_tags_for_resource(resourceArn=group["arn"].removesuffix(":*")).get("tags", {})
        if tags.get("cloudburst") == "true":
            remove = functools.partial(logs.delete_log_group, logGroupName=group["logGroupName"])
            out.append(("log group", group["logGroupName"], remove))
    tagged = [{"Name": "tag:cloudburst", "Values": ["true"]}]
    for group in ec2.describe_security_groups(Filters=tagged).get("SecurityGroups", []):
        out.append(
            ("security group", group["GroupId"], functools.partial(ec2.delete_security_group, GroupId=group["GroupId"]))
        )
    for project in codebuild.batch_get_projects(names=[BUILD_PROJECT]).get("projects", []):
        if {"key": "cloudburst", "value": "true"} in project.get("tags", []):
            remove = functools.partial(codebuild.delete_project, name=project["name"])
            out.append(("CodeBuild project", project["name"], remove))
    return out


def _tagged_access(ctx: Context) -> list[Found]:
    """The roles, the boundary policy and the parameters (job keys, index logins)."""
    out: list[Found] = []
    iam, ssm = ctx.client("iam"), ctx.client("ssm")
    for role in iam.list_roles().get("Roles", []):
        if role["RoleName"] not in (ctx.execution_role, ctx.old_task_role, ctx.build_role):
            continue
        if TAG in iam.list_role_tags(RoleName=role["RoleName"]).get("Tags", []):
            out.append(("role", role["RoleName"], functools.partial(delete_role, iam, role["RoleName"])))
    for page in iam.get_paginator("list_roles").paginate(PathPrefix=JOB_ROLE_PATH):
        for role in page.get("Roles", []):  # jobs' own roles, left by clients that died
            out.append(("job role", role["RoleName"], functools.partial(delete_job_role, iam, role["RoleName"])))
    try:
        iam.get_policy(PolicyArn=ctx.names.boundary_arn)
        remove = functools.partial(_delete_policy, iam, ctx.names.boundary_arn)
        out.append(("policy", ctx.names.boundary_name, remove))
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
    tagged_parameters = [{"Key": "tag:cloudburst", "Values": ["true"]}]  # job keys and index logins, by tag
    names = [
        p["Name"]
        for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=tagged_parameters)
        for p in page.get("Parameters", [])
    ]
    # the stage cache's keys, also by their path: their entries in the bucket go with it
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=CACHE_PARAMETERS, Recursive=True):
        names += [p["Name"] for p in page.get("Parameters", [])]
    for name in dict.fromkeys(names):
        out.append(("parameter", name, functools.partial(ssm.delete_parameter, Name=name)))
    return out


def _keys(ctx: Context, configured: str, found: list[Found]) -> list[str]:
    """Add setup's KMS key (by its alias, or the configured one) to ``found``, last, so that everything
    encrypted with it goes first; its deletion is scheduled after the shortest wait KMS allows. Returns
    the keys left alone: the configured key when the user brought it."""
    kms = ctx.client("kms")
    candidates = [configured] if configured.split(":")[3:4] == [ctx.region] else []
    alias = find_alias(kms, ctx.region)
    if alias is not None:
        candidates.append(str(alias["Arn"]))
    theirs = []
    for arn in dict.fromkeys(candidates):
        metadata = describe_key(kms, arn)
        if metadata is None or metadata.get("KeyState") == "PendingDeletion":
            continue
        if not is_ours(kms, arn):
            theirs.append(arn)
            continue
        remove = functools.partial(retire_key, kms, arn, ctx.region)
        found.append(("KMS key", f"{arn} (deleted after {DELETION_WINDOW_DAYS} days, the shortest wait)", remove))
    return theirs


def _delete_bucket(s3: Any, name: str) -> None:
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=name):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
        objects += [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
    s3.delete_bucket(Bucket=name)


def _delete_cluster(ecs: Any, cluster: dict[str, Any]) -> None:
    running = ecs.list_tasks(cluster=cluster["clusterArn"]).get("taskArns", [])
    for task in running:
        ecs.stop_task(cluster=cluster["clusterArn"], task=task, reason="cloudburst teardown")
    ecs.delete_cluster(cluster=cluster["clusterArn"])


def _delete_policy(iam: Any, arn: str) -> None:
    for version in iam.list_policy_versions(PolicyArn=arn)["Versions"]:
        if not version["IsDefaultVersion"]:
            iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
    iam.delete_policy(PolicyArn=arn)
