"""Set-up steps for IAM: the execution and build roles, the permissions boundary of every job's role,
and the removal of the old shared task role.
"""

from __future__ import annotations

import json
from typing import Any

from ..clients import error_code, translate
from ..policies import boundary_policy, same_document, service_trust
from .context import TAG, Context, Report, Step, look_or_make, policy_document, record

__all__ = ["delete_role", "step_boundary", "step_old_task_role", "step_role"]


def step_role(
    ctx: Context,
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
    found = look_or_make(
        report,
        f"role {name}",
        fix,
        lambda: iam.get_role(RoleName=name)["Role"],
        lambda: iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description="cloudburst workers", Tags=[TAG]
        )["Role"],
        missing="NoSuchEntity",
        calls=("IAM", "GetRole", "CreateRole", name),
    )
    if found is None:
        return
    role, status = found
    repaired = []
    found_trust = policy_document(role.get("AssumeRolePolicyDocument"))
    if status == "found" and not same_document(found_trust, trust):
        repaired.append(f"trust policy ({service} of this account only)")
        if fix:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
    try:
        current = policy_document(iam.get_role_policy(RoleName=name, PolicyName="cloudburst")["PolicyDocument"])
    except Exception:
        current = None
    if current is None or not same_document(current, policy):
        if status == "found":
            repaired.append("permissions")
        if fix:
            iam.put_role_policy(RoleName=name, PolicyName="cloudburst", PolicyDocument=json.dumps(policy))
    repaired += _strip_other_grants(iam, name, fix)
    record(report, f"role {name}", status, repaired, fix)
    report.config[key] = role["Arn"]


def step_boundary(ctx: Context, report: Report, fix: bool) -> None:
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
    if not same_document(policy_document(version["PolicyVersion"]["Document"]), wanted):
        repaired.append("permissions")
        if fix:
            _new_default_version(iam, names.boundary_arn, wanted)
    record(report, label, "found", repaired, fix)
    report.config["worker_boundary_arn"] = names.boundary_arn


def _new_default_version(iam: Any, arn: str, document: dict[str, Any]) -> None:
    """Make ``document`` the policy's default version, deleting the oldest when IAM's five are taken."""
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    if len(versions) >= 5:
        oldest = min((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
        iam.delete_policy_version(PolicyArn=arn, VersionId=oldest["VersionId"])
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)


def step_old_task_role(ctx: Context, report: Report, fix: bool) -> None:
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
            delete_role(iam, ctx.old_task_role)
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


def delete_role(iam: Any, name: str) -> None:
    """Delete a role with its inline and attached policies."""
    for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    for attached in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
        iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
    iam.delete_role(RoleName=name)
