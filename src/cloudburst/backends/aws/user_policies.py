"""The policies people hold, as plain data: a user's (run jobs, watch them, clean up after them) and an
administrator's (set up, repair and tear down what the user's policy works in). ``setup --print-user-policy``
and ``--print-setup-policy`` print them; the emulator runs a client under exactly the user policy.
"""

from __future__ import annotations

from .policies import (
    BUILD_LOG_GROUP,
    JOB_ROLE_PREFIX,
    LOG_GROUP,
    REPOSITORY,
    ROLE_READS,
    VERSION,
    Document,
    Names,
    allow,
    service_roles,
)

__all__ = ["setup_policy", "user_policy"]

_ROLE_WRITES = [
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:TagRole",
    "iam:UpdateAssumeRolePolicy",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:DetachRolePolicy",
]
#: the key ``setup --kms-key create`` made, known by its alias
_KMS_ALIAS = "alias/cloudburst-{region}"


def _our_key(names: Names) -> Document:
    """The condition that names setup's key by its alias."""
    return {"ForAnyValue:StringEquals": {"kms:ResourceAliases": _KMS_ALIAS.format(region=names.region)}}


def user_policy(names: Names) -> Document:
    """What a cloudburst user needs to run jobs, watch them and clean up after them, and no more.

    ``cloudburst setup --print-user-policy`` prints it; the emulator runs a client under exactly this
    policy, so a grant missing here fails the test suite. It makes and deletes job roles only under the
    job-role path and only with the workers' boundary, and passes cloudburst's roles only to ECS and
    CodeBuild; it cannot change the service roles or the boundary (that is :func:`setup_policy`), so
    nothing in it lets its holder reach more than it already may.
    """
    return {
        "Version": VERSION,
        "Statement": [*_lookups(), *_running(names), *_images(names), *_roles(names), *_kms_use(names)],
    }


def _lookups() -> list[Document]:
    """Calls that take no resource, or only read: who am I, prices, quotas, the network, what exists."""
    return [
        allow(
            "LookUps",  # these actions take no resource, or only read
            [
                "sts:GetCallerIdentity",
                "ecr:GetAuthorizationToken",
                "ecr:DescribeRepositories",
                "pricing:GetProducts",
                "servicequotas:GetServiceQuota",
                "servicequotas:GetAWSDefaultServiceQuota",
                "servicequotas:ListRequestedServiceQuotaChangeHistoryByQuota",
                "servicequotas:RequestServiceQuotaIncrease",
                "cloudwatch:GetMetricStatistics",
                "ec2:DescribeVpcs",
                "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups",
                "ecs:ListClusters",
                "ecs:RegisterTaskDefinition",
                "ecs:DescribeTaskDefinition",
                "ecs:TagResource",
                "logs:DescribeLogGroups",
                "ssm:DescribeParameters",
                "s3:ListAllMyBuckets",
                "sqs:ListQueues",
                "iam:ListRoles",
                "codebuild:ListProjects",
            ],
            "*",
        ),
    ]


def _running(names: Names) -> list[Document]:
    """Running and watching jobs: their data, queues, parameters and workers."""
    bucket = names.bucket_arn
    return [
        allow(
            "JobData",  # job data, build contexts and bundles; the bucket's settings are only read
            ["s3:Get*", "s3:List*", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            [bucket, f"{bucket}/*"],
        ),
        allow("Queues", "sqs:*", names.arn("sqs", "cloudburst-*")),
        allow("Parameters", "ssm:*", names.parameter_arn("cloudburst/*")),
        allow("Cluster", ["ecs:DescribeClusters", "ecs:ListTasks"], names.arn("ecs", "cluster/cloudburst")),
        allow(
            "Workers",
            ["ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks"],
            [names.arn("ecs", "task-definition/cloudburst-*"), names.arn("ecs", "task/cloudburst/*")],
            condition={"ArnEquals": {"ecs:cluster": names.arn("ecs", "cluster/cloudburst")}},
        ),
    ]


def _images(names: Names) -> list[Document]:
    """Worker images (found, pushed by a local Docker build, pruned), their builds, and the logs."""
    return [
        allow(
            "WorkerImages",  # find, push (a local Docker build) and prune images; the repository's settings stay
            [
                "ecr:DescribeImages",
                "ecr:ListImages",
                "ecr:BatchGetImage",
                "ecr:BatchCheckLayerAvailability",
                "ecr:GetDownloadUrlForLayer",
                "ecr:InitiateLayerUpload",
                "ecr:UploadLayerPart",
                "ecr:CompleteLayerUpload",
                "ecr:PutImage",
                "ecr:BatchDeleteImage",
                "ecr:ListTagsForResource",
                "ecr:GetLifecyclePolicy",
            ],
            names.arn("ecr", f"repository/{REPOSITORY}"),
        ),
        allow(
            "ReadLogs",
            [
                "logs:GetLogEvents",
                "logs:FilterLogEvents",
                "logs:DescribeLogStreams",
                "logs:ListTagsForResource",
                "logs:ListTagsLogGroup",
            ],
            [names.arn("logs", "log-group:/cloudburst*"), names.arn("logs", f"log-group:{BUILD_LOG_GROUP}*")],
        ),
        allow("Builds", "codebuild:*", names.arn("codebuild", "project/cloudburst-*")),
    ]


def _roles(names: Names) -> list[Document]:
    """Job roles made and deleted only under their path and with the workers' boundary; cloudburst's roles
    passed only to ECS and CodeBuild; the service roles and the boundary only read."""
    execution, build, _ = service_roles(names)
    return [
        allow(
            "MakeJobRoles",
            ["iam:CreateRole", "iam:PutRolePolicy"],
            names.job_roles,
            condition={"StringEquals": {"iam:PermissionsBoundary": names.boundary_arn}},
        ),
        allow(
            "JobRoles",
            [*ROLE_READS, "iam:DeleteRole", "iam:DeleteRolePolicy", "iam:TagRole", "sts:AssumeRole"],
            # A role that no longer exists has no path to match: its name alone, so that asking for a
            # job role already deleted says NoSuchEntity rather than AccessDenied.
            [names.job_roles, names.arn("iam", f"role/{JOB_ROLE_PREFIX}*", region=False)],
        ),
        allow(
            "PassRolesToEcs",
            "iam:PassRole",
            [execution, names.job_roles],
            condition={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        ),
        allow(
            "PassRoleToCodeBuild",
            "iam:PassRole",
            build,
            condition={"StringEquals": {"iam:PassedToService": "codebuild.amazonaws.com"}},
        ),
        allow("ReadServiceRoles", ROLE_READS, service_roles(names)),
        allow("ReadBoundary", ["iam:GetPolicy", "iam:GetPolicyVersion", "iam:ListPolicyVersions"], names.boundary_arn),
    ]


def _kms_use(names: Names) -> list[Document]:
    """Use of setup's KMS key, if any (a key you bring needs these granted to you)."""
    return [
        allow(
            "UseKmsKey",  # setup's key, if any (a key you bring needs these granted to you)
            [
                "kms:DescribeKey",
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:GenerateDataKey",
                "kms:GetKeyRotationStatus",
                "kms:ListResourceTags",
            ],
            names.arn("kms", "key/*"),
            condition=_our_key(names),
        ),
    ]


def setup_policy(names: Names) -> Document:
    """What ``setup`` and ``teardown`` need besides :func:`user_policy`: making, repairing and removing
    the bucket, repository, cluster, log groups, security group, service roles, the workers' boundary
    and setup's KMS key.

    ``cloudburst setup --print-setup-policy`` prints it. Whoever holds it decides what cloudburst's roles
    may do, so it is an administrator's: hold it while running ``setup`` or ``teardown``, not day to day.
    """
    bucket = names.bucket_arn
    return {
        "Version": VERSION,
        "Statement": [
            allow("Bucket", "s3:*", [bucket, f"{bucket}/*"]),
            allow("Cluster", ["ecs:*"], names.arn("ecs", "cluster/cloudburst")),
            allow("Repository", "ecr:*", names.arn("ecr", f"repository/{REPOSITORY}")),
            allow(
                "LogGroups",
                "logs:*",
                [names.arn("logs", f"log-group:{LOG_GROUP}*"), names.arn("logs", f"log-group:{BUILD_LOG_GROUP}*")],
            ),
            allow(
                "SecurityGroup",
                [
                    "ec2:CreateSecurityGroup",
                    "ec2:DeleteSecurityGroup",
                    "ec2:RevokeSecurityGroupIngress",
                    "ec2:CreateTags",
                ],
                "*",
            ),
            allow("ServiceRoles", [*ROLE_READS, *_ROLE_WRITES], service_roles(names)),
            allow(
                "Boundary",
                [
                    "iam:GetPolicy",
                    "iam:GetPolicyVersion",
                    "iam:CreatePolicy",
                    "iam:CreatePolicyVersion",
                    "iam:DeletePolicyVersion",
                    "iam:ListPolicyVersions",
                    "iam:DeletePolicy",
                    "iam:TagPolicy",
                ],
                names.boundary_arn,
            ),
            *_kms_setup(names),
        ],
    }


def _kms_setup(names: Names) -> list[Document]:
    """Making setup's KMS key (``setup --kms-key create``), rotating it and scheduling its deletion."""
    return [
        # Making a key and tagging it on creation cannot be narrowed to one key: AWS grants it on all.
        allow("MakeKmsKey", ["kms:CreateKey", "kms:TagResource", "kms:CreateAlias"], "*"),
        allow(
            "KmsKey",
            ["kms:EnableKeyRotation", "kms:ScheduleKeyDeletion", "kms:DeleteAlias", "kms:DescribeKey"],
            names.arn("kms", "key/*"),
            condition=_our_key(names),
        ),
        allow(
            "KmsAlias",
            ["kms:CreateAlias", "kms:DeleteAlias"],
            names.arn("kms", _KMS_ALIAS.format(region=names.region)),
        ),
    ]
