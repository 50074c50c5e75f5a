"""Set-up steps for the account's resources: the KMS key, the bucket (private, encrypted, TLS only,
expiring), the ECR repository, the ECS cluster and the log groups. Each finds, makes or repairs.
"""

from __future__ import annotations

import json
from typing import Any

from ....config import userconfig
from ....errors import CloudError
from ..clients import error_code, translate
from ..kms import (
    bucket_encryption,
    create_key,
    describe_encryption,
    describe_key,
    encryption_matches,
    find_alias,
    how_to_fix,
    is_ours,
    key_alias,
    resolve_key,
    rotation_on,
    unusable,
)
from ..owner import s3_client
from ..policies import BUILD_LOG_GROUP, LOG_GROUP, REPOSITORY, same_document
from .context import (
    CLUSTER,
    ECR_LIFECYCLE,
    LOG_RETENTION_DAYS,
    TAG,
    TLS_ONLY_SID,
    Context,
    Report,
    Step,
    lifecycle,
    lifecycle_matches,
    look_or_make,
    policy_document,
    record,
)

__all__ = [
    "chosen_key",
    "step_bucket",
    "step_cluster",
    "step_kms_key",
    "step_log_groups",
    "step_repository",
    "tls_only_statement",
]


def chosen_key(ctx: Context, choice: str | None, configured: str) -> tuple[str, bool]:
    """The key setup is to use (its ARN; "" for AWS-managed keys) and whether to make it, from ``--kms-key``
    (None: keep the configured one). A key that is missing or not enabled is refused here, before any change."""
    kms = ctx.client("kms")
    if choice is None:
        if not configured or configured.split(":")[3:4] != [ctx.region]:
            return "", False  # no key configured for this region (keys are regional)
        return resolve_key(kms, configured), False
    if choice == "default":
        return "", False
    if choice == "create":
        found = find_alias(kms, ctx.region)  # made by an earlier `--kms-key create`: used again
        return (resolve_key(kms, key_alias(ctx.region)), False) if found is not None else ("", True)
    return resolve_key(kms, choice), False


def step_kms_key(ctx: Context, report: Report, fix: bool, make: bool) -> None:
    """The customer-managed key of job keys and the bucket, if one is chosen: usable, and rotating when setup
    made it (a key the user brought is only checked). Without one, AWS-managed keys: nothing to make."""
    kms = ctx.client("kms")
    if make and fix:
        ctx.kms_key = create_key(kms, ctx.region, ctx.account, ctx.partition)
        report.add(Step(f"KMS key {key_alias(ctx.region)}", "made", f"{ctx.kms_key}: symmetric, yearly rotation on"))
        report.config["kms_key"] = ctx.kms_key
        return
    if not ctx.kms_key:
        report.add(Step("KMS key", "ok", "AWS-managed: aws/ssm for job keys, SSE-S3 for the bucket"))
        return
    label = f"KMS key {ctx.kms_key}"
    problem = unusable(describe_key(kms, ctx.kms_key))
    if problem:
        report.add(Step(label, "problem", problem, how_to_fix(ctx.kms_key, problem)))
        return
    report.config["kms_key"] = ctx.kms_key
    if not is_ours(kms, ctx.kms_key):
        report.add(Step(label, "found", "yours (not made by setup): used as it is"))
    elif rotation_on(kms, ctx.kms_key):
        report.add(Step(label, "found", f"{key_alias(ctx.region)}, yearly rotation on"))
    else:
        if fix:
            with translate("KMS", "EnableKeyRotation", ctx.kms_key):
                kms.enable_key_rotation(KeyId=ctx.kms_key)
        record(report, label, "found", ["yearly rotation on"], fix)


def step_bucket(ctx: Context, report: Report, fix: bool) -> None:
    """The job-data bucket: private, encrypted, TLS only, its data expiring."""
    name = ctx.bucket
    s3 = s3_client(name, ctx.region, ctx.profile, owner=ctx.account)
    status = _find_or_make_bucket(ctx, s3, name, fix)
    if status is None:
        report.add(Step(f"bucket {name}", "problem", "missing", "run `cloudburst setup`"))
        return
    repaired = _bucket_settings(ctx, s3, name, fix)
    repaired += _bucket_guards(s3, name, fix, ctx.partition)
    try:
        tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
    except Exception:
        tags = []
    if TAG not in tags:
        repaired.append("tagged")
        if fix:
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [*tags, TAG]})
    record(report, f"bucket {name}", status, repaired, fix)
    report.config["bucket"] = name


def _find_or_make_bucket(ctx: Context, s3: Any, name: str, fix: bool) -> str | None:
    """The bucket's status: found, or made (``fix``), or None when it is missing and not to be made. A
    bucket of another account is refused: cloudburst stores nothing there."""
    try:
        s3.head_bucket(Bucket=name)
        return "found"
    except Exception as exc:
        if error_code(exc) in ("403", "AccessDenied"):
            raise CloudError(
                f"the bucket {name} exists but this account ({ctx.account}) does not own it, or may not read it: "
                "cloudburst stores nothing there. Check your AWS credentials (`aws sts get-caller-identity`).",
                service="S3",
                operation="HeadBucket",
                code=error_code(exc),
            ) from exc
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            with translate("S3", "HeadBucket", name):
                raise
    if not fix:
        return None
    with translate("S3", "CreateBucket", name):
        if ctx.region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": ctx.region})
    return "made"


def _bucket_settings(ctx: Context, s3: Any, name: str, fix: bool) -> list[str]:
    """Public access blocked, the configured encryption, the lifecycle rules: what was (or would be) repaired."""
    repaired = []
    block = {k: True for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")}
    try:
        current = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    except Exception:
        current = {}
    if current != block:
        repaired.append("public access blocked")
        if fix:
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)
    try:
        rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    except Exception:
        rules = []
    if not encryption_matches(rules, ctx.kms_key):
        repaired.append(f"encryption {describe_encryption(ctx.kms_key)}")
        if fix:
            s3.put_bucket_encryption(
                Bucket=name, ServerSideEncryptionConfiguration={"Rules": [bucket_encryption(ctx.kms_key)]}
            )
    try:
        current = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    except Exception:
        current = []
    cache_days = int(userconfig.lookup("cache_days").value)
    wanted = lifecycle(cache_days)
    if not lifecycle_matches(current, wanted):
        repaired.append(
            f"lifecycle: job data and build contexts expire after 7 days, the stage cache after {cache_days}, "
            "bundles after 30, uploads after 1"
        )
        if fix:
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=wanted)
    return repaired


def _bucket_guards(s3: Any, name: str, fix: bool, partition: str = "aws") -> list[str]:
    """Objects are always the bucket owner's: ACLs are off, so no writer can keep an object to itself.
    And the bucket refuses requests that do not come over TLS."""
    repaired = []
    try:
        rules = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
    except Exception:
        rules = []
    if rules != [{"ObjectOwnership": "BucketOwnerEnforced"}]:
        repaired.append("object ownership enforced")
        if fix:
            s3.put_bucket_ownership_controls(
                Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
            )
    return repaired + _tls_only(s3, name, fix, partition)


def tls_only_statement(bucket: str, partition: str = "aws") -> dict[str, Any]:
    """The bucket policy statement that denies every request not made over TLS (AWS's recommended form)."""
    arn = f"arn:{partition}:s3:::{bucket}"
    return {
        "Sid": TLS_ONLY_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _tls_only(s3: Any, name: str, fix: bool, partition: str) -> list[str]:
    """The TLS-only statement in the bucket policy; other statements a user added are kept."""
    try:
        policy = policy_document(s3.get_bucket_policy(Bucket=name)["Policy"])
    except Exception as exc:
        if error_code(exc) not in ("NoSuchBucketPolicy", "404", "NoSuchBucket"):
            with translate("S3", "GetBucketPolicy", name):
                raise
        policy = {"Version": "2012-10-17", "Statement": []}
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else list(statements)
    wanted = tls_only_statement(name, partition)
    if any(same_document(s, wanted) for s in statements):
        return []
    if fix:
        others = [s for s in statements if s.get("Sid") != TLS_ONLY_SID]
        document = {"Version": "2012-10-17", "Statement": [*others, wanted]}
        with translate("S3", "PutBucketPolicy", name):
            s3.put_bucket_policy(Bucket=name, Policy=json.dumps(document))
    return ["requests without TLS denied (bucket policy)"]


def step_repository(ctx: Context, report: Report, fix: bool) -> None:
    """The ECR repository of worker images: immutable tags, scanned, old images expiring."""
    ecr = ctx.client("ecr")
    found = look_or_make(
        report,
        f"ECR repository {REPOSITORY}",
        fix,
        lambda: ecr.describe_repositories(repositoryNames=[REPOSITORY])["repositories"][0],
        lambda: ecr.create_repository(
            repositoryName=REPOSITORY,
            imageTagMutability="IMMUTABLE",  # a tag, once pushed, always names the same image
            imageScanningConfiguration={"scanOnPush": True},
            tags=[TAG],
        )["repository"],
        missing="RepositoryNotFoundException",
        calls=("ECR", "DescribeRepositories", "CreateRepository", REPOSITORY),
    )
    if found is None:
        return
    repo, status = found
    repaired = []
    if repo.get("imageTagMutability") != "IMMUTABLE":  # else anyone able to push can swap an image under its tag
        repaired.append("tags immutable")
        if fix:
            ecr.put_image_tag_mutability(repositoryName=REPOSITORY, imageTagMutability="IMMUTABLE")
    try:
        ecr.get_lifecycle_policy(repositoryName=REPOSITORY)
    except Exception:
        repaired.append("lifecycle policy (keep 20 images)")
        if fix:
            ecr.put_lifecycle_policy(repositoryName=REPOSITORY, lifecyclePolicyText=json.dumps(ECR_LIFECYCLE))
    record(report, f"ECR repository {REPOSITORY}", status, repaired, fix)
    report.config["ecr_repository"] = REPOSITORY
    report.config.setdefault("_repository_uri", repo.get("repositoryUri", ""))


def step_cluster(ctx: Context, report: Report, fix: bool) -> None:
    """The ECS cluster, with the FARGATE and FARGATE_SPOT capacity providers."""
    ecs = ctx.client("ecs")
    found = ecs.describe_clusters(clusters=[CLUSTER]).get("clusters", [])
    active = [c for c in found if c.get("status") == "ACTIVE"]
    providers = {"FARGATE", "FARGATE_SPOT"}
    if not active:
        if not fix:
            report.add(Step(f"ECS cluster {CLUSTER}", "problem", "missing", "run `cloudburst setup`"))
            return
        with translate("ECS", "CreateCluster", CLUSTER):
            ecs.create_cluster(
                clusterName=CLUSTER,
                capacityProviders=sorted(providers),
                tags=[{"key": "cloudburst", "value": "true"}],
            )
        report.add(Step(f"ECS cluster {CLUSTER}", "made", "FARGATE and FARGATE_SPOT"))
    else:
        have = set(active[0].get("capacityProviders") or [])
        if providers <= have:
            report.add(Step(f"ECS cluster {CLUSTER}", "found", "FARGATE and FARGATE_SPOT"))
        elif fix:
            ecs.put_cluster_capacity_providers(
                cluster=CLUSTER, capacityProviders=sorted(providers | have), defaultCapacityProviderStrategy=[]
            )
            report.add(Step(f"ECS cluster {CLUSTER}", "repaired", "capacity providers FARGATE, FARGATE_SPOT"))
        else:
            report.add(
                Step(f"ECS cluster {CLUSTER}", "problem", "lacks FARGATE/FARGATE_SPOT", "run `cloudburst setup`")
            )
    report.config["cluster"] = CLUSTER


def step_log_groups(ctx: Context, report: Report, fix: bool) -> None:
    """The workers' log group, and the image builds' (made here rather than by CodeBuild, so that it has a
    retention too)."""
    for group in (LOG_GROUP, BUILD_LOG_GROUP):
        _log_group(ctx, report, fix, group)
    report.config["log_group"] = LOG_GROUP


def _log_group(ctx: Context, report: Report, fix: bool, name: str) -> None:
    logs = ctx.client("logs")
    groups = logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", [])
    group = next((g for g in groups if g["logGroupName"] == name), None)
    status = "found"
    if group is None:
        if not fix:
            report.add(Step(f"log group {name}", "problem", "missing", "run `cloudburst setup`"))
            return
        logs.create_log_group(logGroupName=name, tags={"cloudburst": "true"})
        status = "made"
    repaired = []
    if group is None or group.get("retentionInDays") != LOG_RETENTION_DAYS:
        if status == "found":
            repaired.append(f"retention {LOG_RETENTION_DAYS} days")
        if fix:
            logs.put_retention_policy(logGroupName=name, retentionInDays=LOG_RETENTION_DAYS)
    record(report, f"log group {name}", status, repaired, fix)
