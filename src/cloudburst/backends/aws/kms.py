"""The KMS key that encrypts job keys and the bucket: AWS-managed (the default), one ``setup`` makes, or the user's.

::

    setup --kms-key create      find alias/cloudburst-<region>, or CreateKey (symmetric, rotation on, tagged
                                cloudburst=true, the account's default key policy) + CreateAlias
    setup --kms-key <id|ARN|alias/...>   DescribeKey: its ARN, refused unless Enabled (before any change)
    setup --kms-key default     AWS-managed keys: aws/ssm for job keys, SSE-S3 for the bucket
    teardown                    a key setup made: alias deleted, deletion scheduled (7 days, the minimum);
                                a key the user brought is left alone

The AWS-managed ``aws/ssm`` key needs no IAM grant: its key policy lets the account's principals use it
through SSM. A customer-managed key is used only where IAM policies grant it (policies.py, ``kms_key=``).
"""

from __future__ import annotations

from typing import Any

from ...errors import CloudError
from .clients import error_code, translate

__all__ = [
    "DELETION_WINDOW_DAYS",
    "bucket_encryption",
    "create_key",
    "describe_key",
    "encryption_matches",
    "find_alias",
    "is_ours",
    "key_alias",
    "resolve_key",
    "retire_key",
    "unusable",
]

#: the shortest wait KMS allows before it deletes a key; until then `aws kms cancel-key-deletion` undoes it
DELETION_WINDOW_DAYS = 7
TAG = {"TagKey": "cloudburst", "TagValue": "true"}


def key_alias(region: str) -> str:
    """The alias of the key ``setup --kms-key create`` makes in a region."""
    return f"alias/cloudburst-{region}"


def default_key_policy(account: str, partition: str) -> dict[str, Any]:
    """AWS's default key policy: the account (root) may use and manage the key, so IAM policies decide who does."""
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def describe_key(kms: Any, key: str) -> dict[str, Any] | None:
    """The key's metadata (by id, ARN, alias name or alias ARN), or None when there is no such key."""
    try:
        return dict(kms.describe_key(KeyId=key)["KeyMetadata"])
    except Exception as exc:
        if error_code(exc) in ("NotFoundException", "InvalidArnException"):
            return None
        with translate("KMS", "DescribeKey", key):
            raise


def unusable(metadata: dict[str, Any] | None) -> str:
    """Why a key cannot encrypt job keys and objects ("" when it can)."""
    if metadata is None:
        return "not found"
    state = metadata.get("KeyState", "")
    if state == "PendingDeletion":
        return "pending deletion"
    if state != "Enabled":
        return "disabled" if state == "Disabled" else f"not enabled (state {state})"
    if metadata.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT" or metadata.get("KeyUsage") not in (
        None,
        "ENCRYPT_DECRYPT",
    ):
        return "not a symmetric encryption key (SSM and S3 need one)"
    return ""


def how_to_fix(key: str, problem: str) -> str:
    """The one-line fix for a key that is unusable for ``problem``."""
    choose = "or choose another: `cloudburst setup --kms-key create|default|<key id, ARN or alias/...>`"
    if problem == "pending deletion":
        return f"cancel its deletion (`aws kms cancel-key-deletion --key-id {key}`, then enable it), {choose}"
    if problem.startswith(("disabled", "not enabled")):
        return f"enable it (`aws kms enable-key --key-id {key}`), {choose}"
    return choose


def resolve_key(kms: Any, key: str) -> str:
    """The ARN of an existing, enabled key named by id, ARN or alias: else a CloudError that says why."""
    metadata = describe_key(kms, key)
    problem = unusable(metadata)
    if problem:
        raise CloudError(
            f"the KMS key {key} is {problem}, so job keys and the bucket cannot be encrypted with it; nothing was "
            f"changed. Fix: {how_to_fix(key, problem)}",
            service="KMS",
            operation="DescribeKey",
        )
    assert metadata is not None
    return str(metadata["Arn"])


def find_alias(kms: Any, region: str) -> dict[str, Any] | None:
    """The key setup's alias names in this region (its metadata), or None when there is no alias."""
    return describe_key(kms, key_alias(region))


def create_key(kms: Any, region: str, account: str, partition: str) -> str:
    """Make cloudburst's key: symmetric, yearly rotation on, tagged, with the alias; returns its ARN."""
    import json

    with translate("KMS", "CreateKey"):
        metadata = kms.create_key(
            Description=f"cloudburst: job keys and job data in {region} (made by cloudburst setup)",
            KeySpec="SYMMETRIC_DEFAULT",
            KeyUsage="ENCRYPT_DECRYPT",
            Policy=json.dumps(default_key_policy(account, partition)),
            Tags=[TAG],
        )["KeyMetadata"]
    arn = str(metadata["Arn"])
    # The alias first: the setup policy grants rotation on the key known by this alias, and no other.
    with translate("KMS", "CreateAlias", key_alias(region)):
        kms.create_alias(AliasName=key_alias(region), TargetKeyId=metadata["KeyId"])
    with translate("KMS", "EnableKeyRotation", arn):
        kms.enable_key_rotation(KeyId=arn)
    return arn


def is_ours(kms: Any, key: str) -> bool:
    """Did setup make this key (tag cloudburst=true)? A key the user brought is never changed or deleted."""
    try:
        tags = kms.list_resource_tags(KeyId=key).get("Tags", [])
    except Exception as exc:
        if error_code(exc) in ("NotFoundException", "AccessDeniedException"):
            return False
        with translate("KMS", "ListResourceTags", key):
            raise
    return TAG in tags


def rotation_on(kms: Any, key: str) -> bool:
    """Is yearly automatic rotation on for this key?"""
    with translate("KMS", "GetKeyRotationStatus", key):
        return bool(kms.get_key_rotation_status(KeyId=key).get("KeyRotationEnabled"))


def retire_key(kms: Any, key: str, region: str) -> None:
    """Delete setup's alias (when it names this key) and schedule the key's deletion after the shortest wait."""
    alias = find_alias(kms, region)
    # Deletion first: the setup policy reaches only the key its alias names.
    with translate("KMS", "ScheduleKeyDeletion", key):  # by key id: moto's emulation takes no ARN here
        kms.schedule_key_deletion(KeyId=key.rsplit("/", 1)[-1], PendingWindowInDays=DELETION_WINDOW_DAYS)
    if alias is not None and alias.get("Arn") == key:
        with translate("KMS", "DeleteAlias", key_alias(region)):
            kms.delete_alias(AliasName=key_alias(region))


def bucket_encryption(kms_key: str) -> dict[str, Any]:
    """The bucket's default encryption rule: SSE-KMS with the key and S3 Bucket Keys (far fewer KMS requests,
    so far lower KMS cost), or SSE-S3 without one."""
    if kms_key:
        return {
            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key},
            "BucketKeyEnabled": True,
        }
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def encryption_matches(rules: list[dict[str, Any]], kms_key: str) -> bool:
    """Do the bucket's encryption rules say what :func:`bucket_encryption` says?"""
    if len(rules) != 1:
        return False
    found = rules[0].get("ApplyServerSideEncryptionByDefault", {})
    if kms_key:
        return (
            found.get("SSEAlgorithm") == "aws:kms"
            and found.get("KMSMasterKeyID") == kms_key
            and rules[0].get("BucketKeyEnabled") is True
        )
    return bool(found.get("SSEAlgorithm") == "AES256")


def describe_encryption(kms_key: str) -> str:
    """The bucket's encryption, in words."""
    return f"SSE-KMS with {kms_key}, S3 Bucket Key on" if kms_key else "SSE-S3"
