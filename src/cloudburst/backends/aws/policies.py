"""Every IAM document cloudburst writes for its roles, built here and nowhere else, as plain data (the policies
people hold are in ``user_policies``).

::

    who                     role (per region)                 may
    ──────────────────────  ────────────────────────────────  ───────────────────────────────────────────
    ECS, starting a worker  cloudburst-execution-<region>     pull the worker image, write its log stream,
                                                              read package-index logins (image='python')
    one job's workers       cloudburst-job-<job id>           that job's objects, its two queues, its key,
                            (path /cloudburst/jobs/; made     its environment bundle; ECS Exec only when
                            and deleted with the job)         debug=True. Nothing of any other job.
    CodeBuild               cloudburst-build-<region>         read build contexts, push the worker image
    the user                (their own identity)              user_policies.user_policy(): run, watch, clean up
    an administrator        (their own identity)              user_policies.setup_policy(): set up, repair,
                                                              tear down

A job's role lives under the path ``/cloudburst/jobs/`` and carries the permissions boundary
``cloudburst-worker-boundary-<region>`` (a managed policy ``setup`` makes): whatever a job role's own
policy says, it never reaches past cloudburst's job resources, and the user policy lets a user create
roles only under that path and only with that boundary, so the right to make job roles is no way to
escalate privileges.

Trust policies carry the confused-deputy conditions AWS recommends: ``aws:SourceAccount``, and
``aws:SourceArn`` where the service sets it, so no other account's ECS task or CodeBuild project
can take cloudburst's roles. ``setup`` and ``doctor`` compare whole documents against these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUILD_LOG_GROUP",
    "JOB_ROLE_PATH",
    "LOG_GROUP",
    "ROLE_READS",
    "Document",
    "Names",
    "allow",
    "boundary_policy",
    "build_policy",
    "execution_policy",
    "job_role_name",
    "job_trust",
    "same_document",
    "service_roles",
    "service_trust",
    "worker_policy",
]

Document = dict[str, Any]

VERSION = "2012-10-17"
LOG_GROUP = "/cloudburst/workers"
BUILD_LOG_GROUP = "/aws/codebuild/cloudburst-image-builder"
REPOSITORY = "cloudburst"
JOB_ROLE_PATH = "/cloudburst/jobs/"
JOB_ROLE_PREFIX = "cloudburst-job-"
ECS_EXEC = [
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]


@dataclass(frozen=True)
class Names:
    """An account's cloudburst resources in one region, by name and ARN."""

    account: str
    region: str
    partition: str = "aws"
    bucket_name: str = ""  # setup's bucket unless the user named another

    @property
    def bucket(self) -> str:
        return self.bucket_name or f"cloudburst-{self.account}-{self.region}"

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}"

    def arn(self, service: str, resource: str, *, region: bool = True) -> str:
        return f"arn:{self.partition}:{service}:{self.region if region else ''}:{self.account}:{resource}"

    def parameter_arn(self, name: str) -> str:
        return self.arn("ssm", f"parameter/{name.lstrip('/')}")

    @property
    def boundary_name(self) -> str:
        return f"cloudburst-worker-boundary-{self.region}"

    @property
    def boundary_arn(self) -> str:
        return self.arn("iam", f"policy/{self.boundary_name}", region=False)

    @property
    def job_roles(self) -> str:
        """Every job role's ARN, as a policy pattern."""
        return self.arn("iam", f"role{JOB_ROLE_PATH}{JOB_ROLE_PREFIX}*", region=False)


def service_trust(names: Names, service: str) -> Document:
    """A role that one AWS service may take, for this account's resources only (no confused deputy)."""
    condition: Document = {"StringEquals": {"aws:SourceAccount": names.account}}
    if service == "ecs-tasks.amazonaws.com":
        condition["ArnLike"] = {"aws:SourceArn": names.arn("ecs", "*")}
    elif service == "codebuild.amazonaws.com":
        condition["ArnLike"] = {"aws:SourceArn": names.arn("codebuild", "project/cloudburst-*")}
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return {"Version": VERSION, "Statement": [{**statement, "Condition": condition}]}


def job_role_name(job_id: str) -> str:
    """A job's role: ``cloudburst-job-`` and the job id (role names stop at 64 characters)."""
    return f"{JOB_ROLE_PREFIX}{job_id[:49]}"


def worker_policy(
    names: Names,
    *,
    job_id: str,
    tasks_queue: str,
    results_queue: str,
    key_parameter: str,
    bundle_key: str = "",
    debug: bool = False,
    kms_key: str = "",
) -> Document:
    """One job's workers: what the worker loop uses of that job, and nothing of any other job.

    Objects: read and write under ``jobs/<id>/`` (results, large values, control records); no delete
    (the client deletes the job's data). Queues: take, extend and delete on its task queue; send on its
    result queue. Its key parameter. The environment bundle it installs (``image='python'``). ECS
    Exec's channels only for ``debug=True`` jobs. A worker's output reaches CloudWatch through the
    container's log driver, under the execution role: no log grant here. With a customer-managed
    ``kms_key``: decrypt (its key, objects) and make data keys (objects it writes), through SSM and S3 only.
    """
    prefix = f"jobs/{job_id}/"
    statements: list[Document] = [
        allow("JobData", ["s3:GetObject", "s3:PutObject"], f"{names.bucket_arn}/{prefix}*"),
        # Without ListBucket a missing object reads as AccessDenied rather than NoSuchKey.
        allow(
            "ListJobData", "s3:ListBucket", names.bucket_arn, condition={"StringLike": {"s3:prefix": [f"{prefix}*"]}}
        ),
        allow(
            "TakeTasks",
            ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"],
            names.arn("sqs", tasks_queue),
        ),
        allow("SendResults", "sqs:SendMessage", names.arn("sqs", results_queue)),
        allow("JobKey", "ssm:GetParameter", names.parameter_arn(key_parameter)),
    ]
    if bundle_key:
        statements.append(allow("EnvironmentBundle", "s3:GetObject", f"{names.bucket_arn}/{bundle_key}"))
    if debug:
        statements.append(allow("EcsExecForDebugging", ECS_EXEC, "*"))  # these actions take no resource
    if kms_key:
        statements.append(_key_use(names, kms_key, ["kms:Decrypt", "kms:GenerateDataKey"], ["ssm", "s3"]))
    return {"Version": VERSION, "Statement": statements}


def _key_use(names: Names, kms_key: str, actions: list[str], services: list[str]) -> Document:
    """Use of the configured customer-managed key, only as SSM or S3 use it on the caller's behalf: so it
    opens nothing the caller's SSM and S3 grants do not. (The AWS-managed aws/ssm key and SSE-S3 need no
    grant: their key policies allow the account's principals through those services.)"""
    suffix = "amazonaws.com.cn" if names.partition == "aws-cn" else "amazonaws.com"
    via = [f"{service}.{names.region}.{suffix}" for service in services]
    return allow("KmsKey", actions, kms_key, condition={"StringEquals": {"kms:ViaService": via}})


def boundary_policy(names: Names, kms_key: str = "") -> Document:
    """The most any job role may ever do, whatever its own policy says: cloudburst's job resources in
    this region, environment bundles read-only, ECS Exec's channels; and the configured KMS key as job
    roles use it."""
    key = [_key_use(names, kms_key, ["kms:Decrypt", "kms:GenerateDataKey"], ["ssm", "s3"])] if kms_key else []
    return {
        "Version": VERSION,
        "Statement": [
            allow("JobData", ["s3:GetObject", "s3:PutObject"], f"{names.bucket_arn}/jobs/*"),
            allow(
                "ListJobData", "s3:ListBucket", names.bucket_arn, condition={"StringLike": {"s3:prefix": ["jobs/*"]}}
            ),
            allow(
                "JobQueues",
                ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:SendMessage"],
                names.arn("sqs", "cloudburst-*"),
            ),
            allow("JobKeys", "ssm:GetParameter", names.parameter_arn("cloudburst/jobs/*")),
            allow("EnvironmentBundles", "s3:GetObject", f"{names.bucket_arn}/envs/*"),
            allow("EcsExecForDebugging", ECS_EXEC, "*"),
            *key,
        ],
    }


def job_trust(names: Names, client_principals: Sequence[str] = ()) -> Document:
    """Who may take a job's role: ECS tasks of this account, and (for ``local_workers``) the identity of
    the client that made it, which hands its local workers short-lived credentials of this role only."""
    statements: list[Document] = list(service_trust(names, "ecs-tasks.amazonaws.com")["Statement"])
    if client_principals:
        statements.append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": names.arn("iam", "root", region=False)},
                "Action": "sts:AssumeRole",
                "Condition": {"ArnLike": {"aws:PrincipalArn": list(client_principals)}},
            }
        )
    return {"Version": VERSION, "Statement": statements}


def _index_logins(names: Names) -> Document:
    """Read the package-index logins parameter (builds, and ECS starting image='python' workers)."""
    return allow("IndexLogins", "ssm:GetParameters", names.parameter_arn("cloudburst/index/*"))


def _secrets(names: Names) -> Document:
    """Read the secrets jobs name with ``secrets=`` (ECS resolves them as a worker starts): one path only."""
    return allow("Secrets", "ssm:GetParameters", names.parameter_arn("cloudburst/secrets/*"))


def execution_policy(names: Names) -> Document:
    """What ECS needs to start a worker: pull our image, write its logs, read its index logins and secrets."""
    return {
        "Version": VERSION,
        "Statement": [
            allow("EcrLogin", "ecr:GetAuthorizationToken", "*"),
            allow(
                "PullWorkerImage",
                ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
                names.arn("ecr", f"repository/{REPOSITORY}"),
            ),
            allow("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"], names.arn("logs", f"log-group:{LOG_GROUP}:*")),
            _index_logins(names),
            _secrets(names),
        ],
    }


def build_policy(names: Names, kms_key: str = "") -> Document:
    """CodeBuild's permissions when it builds a worker image: read the context (decrypting it with the
    configured KMS key, if any), push the image, log."""
    key = [_key_use(names, kms_key, ["kms:Decrypt"], ["s3"])] if kms_key else []
    return {
        "Version": VERSION,
        "Statement": [
            allow("Context", "s3:GetObject", f"{names.bucket_arn}/builds/*"),
            allow("EcrLogin", "ecr:GetAuthorizationToken", "*"),
            allow(
                "PushWorkerImage",
                [
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:InitiateLayerUpload",
                    "ecr:UploadLayerPart",
                    "ecr:CompleteLayerUpload",
                    "ecr:PutImage",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                ],
                names.arn("ecr", f"repository/{REPOSITORY}"),
            ),
            allow(
                "Logs",  # setup makes the log group, with a retention
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                names.arn("logs", f"log-group:{BUILD_LOG_GROUP}:*"),
            ),
            _index_logins(names),
            *key,
        ],
    }


ROLE_READS = [
    "iam:GetRole",
    "iam:GetRolePolicy",
    "iam:ListRolePolicies",
    "iam:ListAttachedRolePolicies",
    "iam:ListRoleTags",
]


def service_roles(names: Names) -> list[str]:
    """The ARNs of the service roles setup makes (and the one older versions made)."""
    kinds = ("execution", "build", "task")  # "task": the role all jobs shared before each had its own
    return [names.arn("iam", f"role/cloudburst-{kind}-{names.region}", region=False) for kind in kinds]


def same_document(found: Any, wanted: Document) -> bool:
    """Do two policy documents say the same? A lone string and a one-element list are the same, and so is
    any order of actions or resources; statements are compared whole, so any extra grant or principal,
    or a missing condition, makes a difference."""
    return bool(_normal(found) == _normal(wanted))


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normal(v) for v in value]
        if all(isinstance(v, str) for v in items):
            return tuple(sorted(items)) if len(items) != 1 else items[0]
        return tuple(sorted(items, key=repr))
    return value


def allow(
    sid: str, actions: str | list[str], resources: str | list[str], *, condition: Document | None = None
) -> Document:
    """One ``Allow`` statement, named ``sid``."""
    statement: Document = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement
