"""Every IAM document cloudburst writes, built here and nowhere else, as plain data.

::

    who                     role (per region)                 may
    ──────────────────────  ────────────────────────────────  ───────────────────────────────────────────
    ECS, starting a worker  cloudburst-execution-<region>     pull the worker image, write its log stream,
                                                              read package-index logins (image='python')
    the workers             cloudburst-task-<region>          job data, the job queues (take tasks, send
                                                              results), job keys, environment bundles
    CodeBuild               cloudburst-build-<region>         read build contexts, push the worker image

Trust policies carry the confused-deputy conditions AWS recommends: ``aws:SourceAccount``, and
``aws:SourceArn`` where the service sets it, so no other account's ECS task or CodeBuild project
can take cloudburst's roles. ``setup`` and ``doctor`` compare whole documents against these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUILD_LOG_GROUP",
    "LOG_GROUP",
    "Document",
    "Names",
    "build_policy",
    "execution_policy",
    "same_document",
    "service_trust",
    "task_policy",
]

Document = dict[str, Any]

VERSION = "2012-10-17"
LOG_GROUP = "/cloudburst/workers"
BUILD_LOG_GROUP = "/aws/codebuild/cloudburst-image-builder"
REPOSITORY = "cloudburst"
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

    @property
    def bucket(self) -> str:
        return f"cloudburst-{self.account}-{self.region}"

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}"

    def arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account}:{resource}"


def service_trust(names: Names, service: str) -> Document:
    """A role that one AWS service may take, for this account's resources only (no confused deputy)."""
    condition: Document = {"StringEquals": {"aws:SourceAccount": names.account}}
    if service == "ecs-tasks.amazonaws.com":
        condition["ArnLike"] = {"aws:SourceArn": names.arn("ecs", "*")}
    elif service == "codebuild.amazonaws.com":
        condition["ArnLike"] = {"aws:SourceArn": names.arn("codebuild", "project/cloudburst-*")}
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return {"Version": VERSION, "Statement": [{**statement, "Condition": condition}]}


def task_policy(names: Names) -> Document:
    """The workers' permissions: what the worker loop uses, nothing else.

    Objects under ``jobs/`` read and written (the client deletes them); the job queues: take, extend
    and delete tasks, send results; job keys; the environment bundles workers install
    (``image='python'``); ECS Exec's channels, used only by ``debug=True`` jobs. A worker's output
    reaches CloudWatch through the container's log driver, under the execution role: no log grant here.
    """
    bucket = names.bucket_arn
    return {
        "Version": VERSION,
        "Statement": [
            _allow("JobData", ["s3:GetObject", "s3:PutObject"], f"{bucket}/jobs/*"),
            # Without ListBucket a missing object reads as AccessDenied rather than NoSuchKey.
            _allow("ListJobData", "s3:ListBucket", bucket, condition={"StringLike": {"s3:prefix": ["jobs/*"]}}),
            _allow(
                "JobQueues",
                ["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"],
                names.arn("sqs", "cloudburst-*"),
            ),
            _allow("EcsExecForDebugging", ECS_EXEC, "*"),  # these actions take no resource; they carry no job data
            _allow("JobKeys", "ssm:GetParameter", names.arn("ssm", "parameter/cloudburst/jobs/*")),
            _allow("EnvironmentBundles", "s3:GetObject", f"{bucket}/envs/*"),  # image='python': what workers install
        ],
    }


def _index_logins(names: Names) -> Document:
    """Read the package-index logins parameter (builds, and ECS starting image='python' workers)."""
    return _allow("IndexLogins", "ssm:GetParameters", names.arn("ssm", "parameter/cloudburst/index/*"))


def execution_policy(names: Names) -> Document:
    """What ECS needs to start a worker: pull our image, write its logs."""
    return {
        "Version": VERSION,
        "Statement": [
            _allow("EcrLogin", "ecr:GetAuthorizationToken", "*"),
            _allow(
                "PullWorkerImage",
                ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
                names.arn("ecr", f"repository/{REPOSITORY}"),
            ),
            _allow(
                "Logs", ["logs:CreateLogStream", "logs:PutLogEvents"], names.arn("logs", f"log-group:{LOG_GROUP}:*")
            ),
            _index_logins(names),
        ],
    }


def build_policy(names: Names) -> Document:
    """CodeBuild's permissions when it builds a worker image: read the context, push the image, log."""
    return {
        "Version": VERSION,
        "Statement": [
            _allow("Context", "s3:GetObject", f"{names.bucket_arn}/builds/*"),
            _allow("EcrLogin", "ecr:GetAuthorizationToken", "*"),
            _allow(
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
            _allow(
                "Logs",  # setup makes the log group, with a retention
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                names.arn("logs", f"log-group:{BUILD_LOG_GROUP}:*"),
            ),
            _index_logins(names),
        ],
    }


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


def _allow(sid: str, actions: str | list[str], resources: str, *, condition: Document | None = None) -> Document:
    statement: Document = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement
