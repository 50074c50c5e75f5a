"""EMULATION: who acts in the emulated account: the user (the client) and the roles AWS services take.

::

    make_user(regions)   the emulated user, made in moto's backend (not through the enforced API):
                         user_policy() and setup_policy() for each region (it sets up, runs jobs and
                         tears down), and an access key made for this run only
    make_runner(region)  a user holding user_policy() alone: what running cloudburst needs
    assume(role, ...)    a role taken as ECS (a task's role) or CodeBuild (a build's) takes it: only
                         when its trust policy lets that service in for this account and resource
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timezone

from ..backends.aws.credentials import Credentials
from ..backends.aws.policies import Names
from ..backends.aws.user_policies import setup_policy, user_policy
from .access import find_role
from .policy import trusts

__all__ = ["ACCOUNT", "USER_NAME", "RoleNotTrusted", "assume", "make_admin", "make_runner", "make_user"]

ACCOUNT = "123456789012"  # moto's account, the one the emulated user's key belongs to
USER_NAME = "cloudburst-user"
ADMIN_NAME = "emulated-administrator"


class RoleNotTrusted(Exception):
    """A service could not take a role: it is missing, or its trust policy does not let the service in."""


def make_user(regions: Sequence[str]) -> dict[str, str]:
    """Make the emulated user, holding exactly ``user_policy()`` and ``setup_policy()`` for each of
    ``regions``; returns its access key as environment variables. The key is random, made for this run."""
    from moto.iam.models import iam_backends

    backend = iam_backends[ACCOUNT]["aws"]
    backend.create_user(regions[0], USER_NAME)
    for region in regions:
        names = Names(ACCOUNT, region)
        backend.put_user_policy(USER_NAME, f"cloudburst-{region}", json.dumps(user_policy(names)))
        backend.put_user_policy(USER_NAME, f"cloudburst-setup-{region}", json.dumps(setup_policy(names)))
    key = backend.create_access_key(USER_NAME)
    return {"AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key}


def make_runner(region: str, name: str = "cloudburst-runner") -> dict[str, str]:
    """A user holding ``user_policy()`` alone, for ``region``: someone who runs cloudburst but did not
    set it up. Returns its access key as environment variables."""
    from moto.iam.models import iam_backends

    backend = iam_backends[ACCOUNT]["aws"]
    backend.create_user(region, name)
    backend.put_user_policy(name, f"cloudburst-{region}", json.dumps(user_policy(Names(ACCOUNT, region))))
    key = backend.create_access_key(name)
    return {"AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key}


def make_admin() -> dict[str, str]:
    """Another identity in the account, allowed everything: for tests that play someone other than the
    cloudburst user (another team's cluster, an inspection of every task definition)."""
    from moto.iam.models import iam_backends

    backend = iam_backends[ACCOUNT]["aws"]
    backend.create_user("us-east-1", ADMIN_NAME)
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    backend.put_user_policy(ADMIN_NAME, "everything", json.dumps(everything))
    key = backend.create_access_key(ADMIN_NAME)
    return {"aws_access_key_id": key.access_key_id, "aws_secret_access_key": key.secret_access_key}


def assume(role_arn: str, *, service: str, source_arn: str, region: str, session: str) -> Credentials:
    """Short-lived credentials of ``role_arn``, taken as AWS ``service`` does for ``source_arn`` (an ECS
    cluster, a CodeBuild project): with ``aws:SourceAccount`` and ``aws:SourceArn`` set as AWS sets them."""
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    role = find_role(iam_backends[account]["aws"], arn=role_arn) if account in iam_backends else None
    if role is None:
        raise RoleNotTrusted(f"{service} could not take role {role_arn}: it does not exist")
    context = {"aws:sourceaccount": [source_arn.split(":")[4]], "aws:sourcearn": [source_arn]}
    if not trusts(role.assume_role_policy_document, "", context, service=service):
        raise RoleNotTrusted(f"{service} could not take role {role_arn}: its trust policy does not let it in")
    made = sts_backends[account]["aws"].assume_role(
        region_name=region,
        role_session_name=session[:64],
        role_arn=role_arn,
        policy="",
        duration=3600,
        external_id="",
    )
    return {
        "AccessKeyId": made.access_key_id,
        "SecretAccessKey": made.secret_access_key,
        "SessionToken": made.session_token,
        # moto's time carries no zone; STS's does, and botocore compares it with an aware time
        "Expiration": made.expiration.replace(tzinfo=timezone.utc),
    }
