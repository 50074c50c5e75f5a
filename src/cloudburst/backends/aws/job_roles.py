"""Each job's own IAM role: made when the job opens, passed to its workers, deleted when it closes.

::

    open_job ─► JobRole.make(...)  CreateRole (path /cloudburst/jobs/, the workers' boundary, tagged
                                   with the job) + PutRolePolicy (policies.worker_policy): 2 calls
    RunTask  ─► overrides.taskRoleArn = role.arn     (retried while IAM makes the new role known)
    local workers ─► role.credentials(): AssumeRole, served on loopback (credentials.py)
    close_job / forget_job / cleanup / teardown ─► delete_job_role: 2–3 calls, missing is fine

Why a role per job: the workers of a job run other people's code (the user's and every package it
imports). A role shared by all jobs would let that code read another job's key and forge that
job's results, which its client would unpickle. A role that names one job's queues, key, objects
and bundle and nothing else makes that impossible, whatever runs inside the worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .clients import client, error_code, translate
from .credentials import Credentials
from .policies import JOB_ROLE_PATH, Document, Names, job_role_name, job_trust

__all__ = ["JobRole", "delete_job_role", "job_roles", "principal_of"]

POLICY_NAME = "cloudburst-job"
#: how long a new role may take to become usable (IAM is eventually consistent; usually a few seconds)
PROPAGATION_SECONDS = 60.0


@dataclass(frozen=True)
class JobRole:
    """A job's role, by name and ARN."""

    name: str
    arn: str

    @classmethod
    def make(
        cls,
        iam: Any,
        names: Names,
        job_id: str,
        policy: Document,
        *,
        tags: Mapping[str, str],
        client_principals: Sequence[str] = (),
    ) -> JobRole:
        """Create the role under the job-role path with the workers' boundary, and put its policy.
        A role left half-made (no policy) is deleted before the error is raised."""
        name = job_role_name(job_id)
        with translate("IAM", "CreateRole", name):
            made = iam.create_role(
                RoleName=name,
                Path=JOB_ROLE_PATH,
                AssumeRolePolicyDocument=json.dumps(job_trust(names, client_principals)),
                PermissionsBoundary=names.boundary_arn,
                Description=f"cloudburst job {job_id}: its workers (deleted with the job)",
                MaxSessionDuration=3600,
                Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            )["Role"]
        try:
            with translate("IAM", "PutRolePolicy", name):
                iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        except BaseException:
            delete_job_role(iam, name)
            raise
        return cls(name, str(made["Arn"]))

    def credentials_source(self, sts: Any, session: str) -> Callable[[], Credentials]:
        """A callable that assumes this role (retrying while IAM makes it known), for local workers."""

        def fetch() -> Credentials:
            deadline = time.monotonic() + PROPAGATION_SECONDS
            delay = 1.0
            while True:
                try:
                    return dict(sts.assume_role(RoleArn=self.arn, RoleSessionName=session[:64])["Credentials"])
                except Exception as exc:
                    if error_code(exc) != "AccessDenied" or time.monotonic() + delay > deadline:
                        with translate("STS", "AssumeRole", self.arn):
                            raise
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

        return fetch


def delete_job_role(iam: Any, name: str) -> bool:
    """Delete a job's role and its policies; False when it was already gone."""
    try:
        for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        iam.delete_role(RoleName=name)
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return False
        with translate("IAM", "DeleteRole", name):
            raise
    return True


def job_roles(region: str | None, profile: str | None) -> dict[str, str]:
    """Every job role in the account: role name → the job id it is tagged with."""
    iam: Any = client("iam", region, profile)
    found: dict[str, str] = {}
    for page in iam.get_paginator("list_roles").paginate(PathPrefix=JOB_ROLE_PATH):
        for role in page.get("Roles", []):
            tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role["RoleName"]).get("Tags", [])}
            found[role["RoleName"]] = tags.get("cloudburst:job", "")
    return found


def principal_of(caller_arn: str) -> list[str]:
    """The ``aws:PrincipalArn`` values of the identity STS names: an assumed role's session is its role,
    under any path."""
    partition, account, resource = caller_arn.split(":")[1], caller_arn.split(":")[4], caller_arn.split(":", 5)[5]
    if resource.startswith("assumed-role/"):
        role = resource.split("/")[1]
        return [f"arn:{partition}:iam::{account}:role/{role}", f"arn:{partition}:iam::{account}:role/*/{role}"]
    return [caller_arn]
