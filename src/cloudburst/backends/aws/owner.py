"""The bucket's owner, named on every S3 request (``ExpectedBucketOwner``).

Bucket names are global: after ``teardown`` anyone may create ``cloudburst-<account>-<region>``
again. A request that names the expected owner is refused by S3 (403) when another account owns
the bucket, so job data, build contexts and bundles are never written to, or read from, a
stranger's bucket.

The owner is the account in the bucket's name when it is cloudburst's own name, else the
account of the caller's credentials (STS). Each S3 client :func:`s3_client` hands out adds
the owner to every operation that takes one (s3transfer's multipart calls and paginators
included), from a botocore ``before-parameter-build`` hook, so no call site can forget it.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from .clients import client, translate

__all__ = ["bucket_owner", "pin", "s3_client"]

#: cloudburst's bucket name (policies.Names.bucket): the account is part of it
_OWN_NAME = re.compile(r"^cloudburst-(\d{12})-[a-z]{2}(-[a-z]+)+-\d$")
_HOOK_ID = "cloudburst-expected-bucket-owner"
_owners: dict[str, str] = {}  # bucket -> the account that must own it
_lock = threading.Lock()


def bucket_owner(bucket: str, region: str | None = None, profile: str | None = None) -> str:
    """The account that must own ``bucket``: the one in its name, else the caller's (one STS call, cached)."""
    with _lock:
        known = _owners.get(bucket)
    if known:
        return known
    match = _OWN_NAME.match(bucket)
    if match:
        return match.group(1)
    with translate("STS", "GetCallerIdentity"):
        return str(client("sts", region, profile).get_caller_identity()["Account"])


def pin(bucket: str, owner: str) -> None:
    """From now on, every S3 request of this process naming ``bucket`` expects ``owner`` to own it."""
    with _lock:
        _owners[bucket] = owner


def s3_client(bucket: str, region: str | None = None, profile: str | None = None, owner: str = "") -> Any:
    """An S3 client whose requests naming ``bucket`` pass ``ExpectedBucketOwner``."""
    pin(bucket, owner or bucket_owner(bucket, region, profile))
    s3: Any = client("s3", region, profile)
    s3.meta.events.register("before-parameter-build.s3", _expect_owner, unique_id=_HOOK_ID)
    return s3


def _expect_owner(params: dict[str, Any], model: Any, **_: Any) -> None:
    with _lock:
        owner = _owners.get(str(params.get("Bucket", "")))
    if owner and model.input_shape is not None and "ExpectedBucketOwner" in model.input_shape.members:
        params.setdefault("ExpectedBucketOwner", owner)
