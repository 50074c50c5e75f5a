"""One-time AWS set-up, its check (doctor) and its removal (teardown).

::

    setup     credentials (STS) ─► KMS key (--kms-key) ─► bucket ─► ECR repository ─► cluster ─► log group ─► network
              ─► roles (execution, task: least privilege) ─► quotas ─► save config.toml
    doctor    the same steps, looking only: every problem with a one-line fix
    teardown  what setup made, found by its tag cloudburst=true, after confirmation

Every step is idempotent: it finds what is there, makes what is missing, repairs what is
wrong, and says which. Everything made is tagged ``cloudburst=true``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...core.words import plural
from ...errors import CloudError
from .clients import client, error_code, translate
from .job_roles import delete_job_role
from .kms import (
    DELETION_WINDOW_DAYS,
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
    retire_key,
    rotation_on,
    unusable,
)
from .owner import pin, s3_client
from .policies import (
    BUILD_LOG_GROUP,
    JOB_ROLE_PATH,
    LOG_GROUP,
    REPOSITORY,
    Names,
    boundary_policy,
    build_policy,
    execution_policy,
    same_document,
    service_trust,
)

__all__ = ["Report", "Step", "doctor", "setup", "teardown"]

TAG = {"Key": "cloudburst", "Value": "true"}
SECURITY_GROUP = "cloudburst-workers"
TLS_ONLY_SID = "CloudburstDenyWithoutTLS"
CLUSTER = "cloudburst"
LOG_RETENTION_DAYS = 30
ON_DEMAND_QUOTA = "L-3032A538"
SPOT_QUOTA = "L-36FBB829"
LIFECYCLE = {
    "Rules": [
        {
            "ID": "cloudburst-expire-job-data",
            "Filter": {"Prefix": "jobs/"},
            "Status": "Enabled",
            "Expiration": {"Days": 7},
        },
        {
            "ID": "cloudburst-expire-build-contexts",
            "Filter": {"Prefix": "builds/"},
            "Status": "Enabled",
            "Expiration": {"Days": 7},
        },
        {
            "ID": "cloudburst-expire-environment-bundles",  # made again by the next job that needs one
            "Filter": {"Prefix": "envs/"},
            "Status": "Enabled",
            "Expiration": {"Days": 30},
        },
        {
            "ID": "cloudburst-abort-incomplete-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
    ]
}
ECR_LIFECYCLE = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "keep the 20 newest worker images",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20},
            "action": {"type": "expire"},
        }
    ]
}


@dataclass
class Step:
    name: str
    status: str  # "found", "made", "repaired", "ok", "problem", "removed", "kept", "info"
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        mark = {"found": "✓", "ok": "✓", "made": "+", "repaired": "~", "removed": "-", "problem": "✗"}.get(
            self.status, "·"
        )
        text = f"{mark} {self.name}: {self.status}" + (f" — {self.detail}" if self.detail else "")
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    echo: Callable[[str], None] = print

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        self.echo(step.line())
        return step

    @property
    def changed(self) -> bool:
        return any(s.status in ("made", "repaired", "removed") for s in self.steps)

    @property
    def problems(self) -> list[Step]:
        return [s for s in self.steps if s.status == "problem"]


class _Context:
    def __init__(self, region: str | None, profile: str | None) -> None:
        self.profile = profile
        sts: Any = client("sts", region, profile)
        self.region: str = region or sts.meta.region_name
        with translate("STS", "GetCallerIdentity"):
            identity = sts.get_caller_identity()
        self.account: str = identity["Account"]
        self.identity: str = identity["Arn"]
        self.partition: str = self.identity.split(":")[1]
        self.kms_key = ""  # the customer-managed key's ARN; "" for AWS-managed keys (aws/ssm, SSE-S3)

    def client(self, service: str) -> Any:
        return client(service, self.region, self.profile)

    @property
    def names(self) -> Names:
        return Names(self.account, self.region, self.partition)

    @property
    def bucket(self) -> str:
        return self.names.bucket

    # IAM is global and each role's policy names one region's resources: one pair of roles per region.
    @property
    def execution_role(self) -> str:
        return f"cloudburst-execution-{self.region}"

    @property
    def old_task_role(self) -> str:
        """The one task role all jobs shared before each job had its own: removed by setup and teardown."""
        return f"cloudburst-task-{self.region}"

    @property
    def build_role(self) -> str:
        return f"cloudburst-build-{self.region}"


# ---------------------------------------------------------------------------- the steps, each look-or-make


def _chosen_key(ctx: _Context, choice: str | None, configured: str) -> tuple[str, bool]:
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


def _kms_key(ctx: _Context, report: Report, fix: bool, make: bool) -> None:
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
        _report(report, label, "found", ["yearly rotation on"], fix)


def _bucket(ctx: _Context, report: Report, fix: bool) -> None:
    name = ctx.bucket
    s3 = s3_client(name, ctx.region, ctx.profile, owner=ctx.account)
    try:
        s3.head_bucket(Bucket=name)
        status = "found"
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
            report.add(Step(f"bucket {name}", "problem", "missing", "run `cloudburst setup`"))
            return
        with translate("S3", "CreateBucket", name):
            if ctx.region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": ctx.region})
        status = "made"
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
        ids = {r.get("ID") for r in s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}
    except Exception:
        ids = set()
    if not {r["ID"] for r in LIFECYCLE["Rules"]} <= ids:
        repaired.append("lifecycle: job data and build contexts expire after 7 days, bundles after 30, uploads after 1")
        if fix:
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=LIFECYCLE)
    repaired += _bucket_guards(s3, name, fix, ctx.partition)
    try:
        tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
    except Exception:
        tags = []
    if TAG not in tags:
        repaired.append("tagged")
        if fix:
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [*tags, TAG]})
    _report(report, f"bucket {name}", status, repaired, fix)
    report.config["bucket"] = name


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
        policy = _document(s3.get_bucket_policy(Bucket=name)["Policy"])
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


def _report(report: Report, name: str, status: str, repaired: list[str], fix: bool) -> None:
    if repaired and status == "found":
        if fix:
            report.add(Step(name, "repaired", "; ".join(repaired)))
        else:
            report.add(Step(name, "problem", "not " + "; not ".join(repaired), "run `cloudburst setup` to repair it"))
    else:
        report.add(Step(name, status, "private, encrypted, expiring" if name.startswith("bucket") else ""))


def _repository(ctx: _Context, report: Report, fix: bool) -> None:
    ecr = ctx.client("ecr")
    try:
        repo = ecr.describe_repositories(repositoryNames=[REPOSITORY])["repositories"][0]
        status = "found"
    except Exception as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            with translate("ECR", "DescribeRepositories", REPOSITORY):
                raise
        if not fix:
            report.add(Step(f"ECR repository {REPOSITORY}", "problem", "missing", "run `cloudburst setup`"))
            return
        with translate("ECR", "CreateRepository", REPOSITORY):
            repo = ecr.create_repository(
                repositoryName=REPOSITORY,
                imageTagMutability="IMMUTABLE",  # a tag, once pushed, always names the same image
                imageScanningConfiguration={"scanOnPush": True},
                tags=[TAG],
            )["repository"]
        status = "made"
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
    _report(report, f"ECR repository {REPOSITORY}", status, repaired, fix)
    report.config["ecr_repository"] = REPOSITORY
    report.config.setdefault("_repository_uri", repo.get("repositoryUri", ""))


def _cluster(ctx: _Context, report: Report, fix: bool) -> None:
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


def _log_groups(ctx: _Context, report: Report, fix: bool) -> None:
    """The workers' log group, and the image builds' (made here rather than by CodeBuild, so that it has a
    retention too)."""
    for group in (LOG_GROUP, BUILD_LOG_GROUP):
        _log_group(ctx, report, fix, group)
    report.config["log_group"] = LOG_GROUP


def _log_group(ctx: _Context, report: Report, fix: bool, name: str) -> None:
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
    _report(report, f"log group {name}", status, repaired, fix)


def _network(ctx: _Context, report: Report, fix: bool, subnets: list[str] | None) -> None:
    ec2 = ctx.client("ec2")
    if subnets:
        found = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
        vpc = found[0]["VpcId"]
        where = f"VPC {vpc}"
    else:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            report.add(
                Step(
                    "network",
                    "problem",
                    "this region has no default VPC",
                    "run `cloudburst setup --subnets subnet-a,subnet-b` with subnets that reach the internet",
                )
            )
            return
        vpc = vpcs[0]["VpcId"]
        found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
        subnets = [s["SubnetId"] for s in found]
        where = f"default VPC {vpc}"
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [SECURITY_GROUP]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if groups:
        group = groups[0]
        status = "found"
    elif fix:
        made = ec2.create_security_group(
            GroupName=SECURITY_GROUP,
            Description="cloudburst workers: outbound only",
            VpcId=vpc,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": [TAG]}],
        )
        group = {"GroupId": made["GroupId"], "IpPermissions": []}
        status = "made"
    else:
        report.add(Step(f"security group {SECURITY_GROUP}", "problem", "missing", "run `cloudburst setup`"))
        return
    repaired = []
    if group.get("IpPermissions"):
        repaired.append("inbound rules removed (workers need none)")
        if fix:
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
    _report(report, f"network: {len(subnets)} subnet(s) in {where}, security group {SECURITY_GROUP}", status, [], fix)
    if repaired:
        _report(report, f"security group {SECURITY_GROUP}", "found", repaired, fix)
    report.config["subnets"] = subnets
    report.config["security_groups"] = [group["GroupId"]]


def _role(
    ctx: _Context,
    report: Report,
    fix: bool,
    name: str,
    policy: dict[str, Any],
    key: str,
    service: str = "ecs-tasks.amazonaws.com",
) -> None:
    """A role with exactly cloudburst's trust policy and one inline policy, ``cloudburst``: anything else
    found on it (another principal, a managed policy, an extra inline policy) is a problem, and removed on
    repair, because it would widen what every worker may do."""
    iam = ctx.client("iam")
    trust = service_trust(ctx.names, service)
    try:
        role = iam.get_role(RoleName=name)["Role"]
        status = "found"
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            with translate("IAM", "GetRole", name):
                raise
        if not fix:
            report.add(Step(f"role {name}", "problem", "missing", "run `cloudburst setup`"))
            return
        with translate("IAM", "CreateRole", name):
            role = iam.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description="cloudburst workers", Tags=[TAG]
            )["Role"]
        status = "made"
    repaired = []
    found_trust = _document(role.get("AssumeRolePolicyDocument"))
    if status == "found" and not same_document(found_trust, trust):
        repaired.append(f"trust policy ({service} of this account only)")
        if fix:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
    try:
        current = _document(iam.get_role_policy(RoleName=name, PolicyName="cloudburst")["PolicyDocument"])
    except Exception:
        current = None
    if current is None or not same_document(current, policy):
        if status == "found":
            repaired.append("permissions")
        if fix:
            iam.put_role_policy(RoleName=name, PolicyName="cloudburst", PolicyDocument=json.dumps(policy))
    repaired += _strip_other_grants(iam, name, fix)
    _report(report, f"role {name}", status, repaired, fix)
    report.config[key] = role["Arn"]


def _boundary(ctx: _Context, report: Report, fix: bool) -> None:
    """The permissions boundary every job role carries: the most a job's workers may ever do."""
    iam = ctx.client("iam")
    names = ctx.names
    wanted = boundary_policy(names, ctx.kms_key)
    label = f"policy {names.boundary_name}"
    try:
        policy = iam.get_policy(PolicyArn=names.boundary_arn)["Policy"]
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            with translate("IAM", "GetPolicy", names.boundary_arn):
                raise
        if not fix:
            report.add(Step(label, "problem", "missing", "run `cloudburst setup`"))
            return
        with translate("IAM", "CreatePolicy", names.boundary_name):
            iam.create_policy(
                PolicyName=names.boundary_name,
                PolicyDocument=json.dumps(wanted),
                Description="cloudburst: the most any job's workers may do",
                Tags=[TAG],
            )
        report.add(Step(label, "made"))
        report.config["worker_boundary_arn"] = names.boundary_arn
        return
    version = iam.get_policy_version(PolicyArn=names.boundary_arn, VersionId=policy["DefaultVersionId"])
    repaired = []
    if not same_document(_document(version["PolicyVersion"]["Document"]), wanted):
        repaired.append("permissions")
        if fix:
            _new_default_version(iam, names.boundary_arn, wanted)
    _report(report, label, "found", repaired, fix)
    report.config["worker_boundary_arn"] = names.boundary_arn


def _new_default_version(iam: Any, arn: str, document: dict[str, Any]) -> None:
    """Make ``document`` the policy's default version, deleting the oldest when IAM's five are taken."""
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    if len(versions) >= 5:
        oldest = min((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
        iam.delete_policy_version(PolicyArn=arn, VersionId=oldest["VersionId"])
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)


def _old_task_role(ctx: _Context, report: Report, fix: bool) -> None:
    """The role all jobs once shared lets any job's workers reach every job: it goes."""
    iam = ctx.client("iam")
    try:
        iam.get_role(RoleName=ctx.old_task_role)
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return
        with translate("IAM", "GetRole", ctx.old_task_role):
            raise
    if fix:
        with translate("IAM", "DeleteRole", ctx.old_task_role):
            _delete_role(iam, ctx.old_task_role)
        report.add(Step(f"role {ctx.old_task_role}", "repaired", "removed: each job now has its own role"))
    else:
        report.add(
            Step(
                f"role {ctx.old_task_role}",
                "problem",
                "shared by every job, so one job's workers can reach another's",
                "run `cloudburst setup` to remove it",
            )
        )


def _strip_other_grants(iam: Any, name: str, fix: bool) -> list[str]:
    """Managed policies attached to a cloudburst role, and inline policies besides its own: found, and removed."""
    found = []
    for attached in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
        found.append(f"attached policy {attached['PolicyName']} removed")
        if fix:
            iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
    for other in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        if other != "cloudburst":
            found.append(f"inline policy {other} removed")
            if fix:
                iam.delete_role_policy(RoleName=name, PolicyName=other)
    return found


def _document(value: Any) -> Any:
    """A policy document as IAM returns it: a dict, or JSON (URL-encoded by some clients)."""
    if isinstance(value, str):
        from urllib.parse import unquote

        return json.loads(unquote(value) if value.startswith("%7B") else value)
    return value


def read_quotas(ctx: _Context) -> dict[str, float | None]:
    quotas: dict[str, float | None] = {}
    sq = ctx.client("service-quotas")
    for label, code in (("on_demand", ON_DEMAND_QUOTA), ("spot", SPOT_QUOTA)):
        try:
            quotas[label] = float(sq.get_service_quota(ServiceCode="fargate", QuotaCode=code)["Quota"]["Value"])
        except Exception:
            quotas[label] = None
    return quotas


def _quotas(ctx: _Context, report: Report) -> None:
    quotas = read_quotas(ctx)
    on_demand, spot = quotas["on_demand"], quotas["spot"]
    if on_demand is None:
        report.add(Step("Fargate vCPU quotas", "info", "could not be read (servicequotas:GetServiceQuota denied)"))
        return
    text = (
        f"{plural(on_demand, 'vCPU')} On-Demand, {spot or 0:g} Spot: up to {plural(int(on_demand), 'worker')} "
        "with cpu=1 at once"
    )
    if on_demand < 1:
        report.add(Step("Fargate vCPU quotas", "problem", text, "request an increase: `cloudburst quota --request 64`"))
    else:
        report.add(Step("Fargate vCPU quotas", "ok", text))


def _build_tools(ctx: _Context, report: Report) -> None:
    from .images import docker_engine

    engine = docker_engine()
    try:
        ctx.client("codebuild").list_projects()
        codebuild = True
    except Exception:
        codebuild = False
    if engine or codebuild:
        tools = " and ".join(t for t, ok in (("a Docker engine", engine), ("AWS CodeBuild", codebuild)) if ok)
        report.add(Step("image builds", "ok", f"{tools} available"))
    else:
        report.add(
            Step(
                "image builds",
                "problem",
                "no Docker engine and no CodeBuild access",
                "start Docker, allow codebuild:* for your identity, or run with image='python' (no build)",
            )
        )


# ---------------------------------------------------------------------------- the three commands


def _steps(ctx: _Context, report: Report, fix: bool, subnets: list[str] | None, make_key: bool = False) -> None:
    _kms_key(ctx, report, fix, make_key)
    _bucket(ctx, report, fix)
    _repository(ctx, report, fix)
    _cluster(ctx, report, fix)
    _log_groups(ctx, report, fix)
    _network(ctx, report, fix, subnets)
    names = ctx.names
    _role(ctx, report, fix, ctx.execution_role, execution_policy(names), "execution_role_arn")
    _boundary(ctx, report, fix)
    _old_task_role(ctx, report, fix)
    build = build_policy(names, ctx.kms_key)
    _role(ctx, report, fix, ctx.build_role, build, "build_role_arn", "codebuild.amazonaws.com")
    _quotas(ctx, report)


def setup(
    *,
    region: str | None = None,
    profile: str | None = None,
    subnets: list[str] | None = None,
    kms_key: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    echo: Callable[[str], None] = print,
) -> Report:
    """Create or repair everything the fargate backend needs, then save it in the user's config.

    ``kms_key``: ``"create"`` (a customer-managed key of setup's own), a key id, ARN or ``alias/...`` (yours),
    ``"default"`` (AWS-managed keys), or None to keep what is configured."""
    from ...config import userconfig

    ctx = _Context(region, profile)
    echo(f"cloudburst setup: AWS account {ctx.account} ({ctx.identity}), region {ctx.region}")
    values = userconfig.load()
    ctx.kms_key, make_key = _chosen_key(ctx, kms_key, str(values.get("kms_key") or ""))
    if confirm is not None and not confirm(
        f"Create or repair cloudburst's bucket, ECR repository, ECS cluster, roles, log group and security group"
        f"{', and a KMS key,' if make_key else ''} in {ctx.region}?"
    ):
        raise CloudError("setup cancelled; nothing was changed", service="cloudburst", operation="setup")
    report = Report(echo=echo)
    _steps(ctx, report, True, subnets, make_key)
    before = dict(values)
    values.update({k: v for k, v in report.config.items() if not k.startswith("_")})
    values.pop("task_role_arn", None)  # each job has its own role now
    if not ctx.kms_key:
        values.pop("kms_key", None)  # AWS-managed keys
    values["region"] = ctx.region
    if profile:
        values["profile"] = profile
    if values != before or not userconfig.config_path().exists():
        path = userconfig.save(values)
        report.add(Step(f"configuration {path}", "made" if not before else "repaired", "saved"))
    else:
        report.add(Step(f"configuration {userconfig.config_path()}", "found", "up to date"))
    echo("Nothing changed: everything was already in place." if not report.changed else "cloudburst is set up.")
    return report


def doctor(*, region: str | None = None, profile: str | None = None, echo: Callable[[str], None] = print) -> Report:
    """Look at every resource, without changing anything; each problem comes with its fix."""
    from ...config import userconfig

    report = Report(echo=echo)
    config = userconfig.load()
    try:
        ctx = _Context(region or config.get("region"), profile or config.get("profile"))
    except CloudError as exc:
        report.add(
            Step("credentials", "problem", str(exc), "configure AWS credentials (aws configure / aws sso login)")
        )
        return report
    report.add(Step("credentials", "ok", f"{ctx.identity} in {ctx.region}"))
    configured = str(config.get("kms_key") or "")
    ctx.kms_key = configured if configured.split(":")[3:4] == [ctx.region] else ""
    if not config.get("bucket"):
        report.add(Step("configuration", "problem", "no saved set-up", "run `cloudburst setup`"))
    _steps(ctx, report, False, config.get("subnets") or None)
    _build_tools(ctx, report)
    echo(f"{len(report.problems)} problem(s) found." if report.problems else "No problems found.")
    return report


def teardown(
    *,
    region: str | None = None,
    profile: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    echo: Callable[[str], None] = print,
) -> Report:
    """Remove what setup made, found by its tag ``cloudburst=true``; nothing else is touched."""
    from ...config import userconfig

    config = userconfig.load()
    ctx = _Context(region or config.get("region"), profile or config.get("profile"))
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


def _tagged_resources(ctx: _Context) -> list[tuple[str, str, Callable[[], object]]]:
    """(kind, name, remover) for every resource in this region that carries cloudburst's tag."""
    out: list[tuple[str, str, Callable[[], object]]] = []
    ecr, ecs, logs, ec2, iam = (ctx.client(s) for s in ("ecr", "ecs", "logs", "ec2", "iam"))
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
    for role in iam.list_roles().get("Roles", []):
        if role["RoleName"] not in (ctx.execution_role, ctx.old_task_role, ctx.build_role):
            continue
        if TAG in iam.list_role_tags(RoleName=role["RoleName"]).get("Tags", []):
            out.append(("role", role["RoleName"], functools.partial(_delete_role, iam, role["RoleName"])))
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
    codebuild, ssm = ctx.client("codebuild"), ctx.client("ssm")
    from .images import BUILD_PROJECT

    for project in codebuild.batch_get_projects(names=[BUILD_PROJECT]).get("projects", []):
        if {"key": "cloudburst", "value": "true"} in project.get("tags", []):
            remove = functools.partial(codebuild.delete_project, name=project["name"])
            out.append(("CodeBuild project", project["name"], remove))
    tagged_parameters = [{"Key": "tag:cloudburst", "Values": ["true"]}]  # job keys and index logins, by tag
    for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=tagged_parameters):
        for parameter in page.get("Parameters", []):
            name = parameter["Name"]
            out.append(("parameter", name, functools.partial(ssm.delete_parameter, Name=name)))
    return out


def _keys(ctx: _Context, configured: str, found: list[tuple[str, str, Callable[[], object]]]) -> list[str]:
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


def _delete_role(iam: Any, name: str) -> None:
    for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    for attached in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
        iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
    iam.delete_role(RoleName=name)
