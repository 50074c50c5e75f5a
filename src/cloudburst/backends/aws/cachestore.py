"""The stage cache on AWS: objects below ``cache/<namespace>/`` of the set-up bucket, and its key in SSM.

Entries are written once with a conditional put (``PutObject`` with ``If-None-Match: *``): S3 refuses the
second writer (412 PreconditionFailed, or 409 ConditionalRequestConflict while the first is in flight), so
concurrent runs never overwrite an entry. The cache key (the HMAC key of manifests) is the SecureString
``/cloudburst/cache/<namespace>/key``, made by the first run that needs it and read once per process.
Workers reach neither: a job's role covers ``jobs/<id>/*`` and ``/cloudburst/jobs/*`` only.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ...config.userconfig import resolve
from ...errors import ConfigurationError, NotSetUpError
from ..cachebase import CacheObject, CacheSite
from .clients import client, error_code, translate
from .store import S3Store

__all__ = ["CACHE_PARAMETERS", "S3CacheStore", "cache_key_parameter", "open_fargate_cache", "read_cache_key"]

_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
_keys: dict[tuple[str | None, str | None, str], bytes] = {}  # (region, profile, parameter) -> key, per process
_keys_lock = threading.Lock()
_TAG = {"Key": "cloudburst", "Value": "true"}  # setup's tag (setup.context.TAG): teardown removes what carries it


class S3CacheStore(S3Store):
    """A ``CacheStore`` below ``s3://bucket/prefix``: ``S3Store`` plus write-once puts, listing and deletion."""

    def put_new(self, key: str, data: bytes) -> bool:
        """PutObject with ``If-None-Match: *``: True when this call made the object, False when one was there."""
        where = f"s3://{self.bucket}/{self._key(key)}"
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data), IfNoneMatch="*")
        except Exception as exc:
            if error_code(exc) in _TAKEN:
                return False
            with translate("S3", "PutObject", where):
                raise
        return True

    def list(self, prefix: str) -> Iterator[CacheObject]:
        """Every object below ``prefix`` (ListObjectsV2, a page of 1,000 at a time)."""
        full = self._key(prefix)
        with translate("S3", "ListObjectsV2", f"s3://{self.bucket}/{full}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = str(item["Key"])[len(self.prefix) :]
                    yield CacheObject(key, int(item["Size"]), item["LastModified"].timestamp())

    def delete(self, keys: Sequence[str]) -> None:
        """DeleteObjects, 1,000 keys a request."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with translate("S3", "DeleteObjects", f"s3://{self.bucket}/{self.prefix}"):
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


#: where the stage cache's keys are in SSM (teardown deletes them)
CACHE_PARAMETERS = "/cloudburst/cache"


def cache_key_parameter(namespace: str) -> str:
    """The SSM parameter that holds namespace ``namespace``'s cache key."""
    return f"{CACHE_PARAMETERS}/{namespace}/key"


def read_cache_key(region: str | None, profile: str | None, namespace: str, kms_key: str = "") -> bytes:
    """The namespace's cache key: read from SSM (once per process), or made there by the first run that asks
    (PutParameter without overwrite: of two first runs, the second reads what the first made)."""
    name = cache_key_parameter(namespace)
    with _keys_lock:
        known = _keys.get((region, profile, name))
    if known is not None:
        return known
    ssm: Any = client("ssm", region, profile)
    value = _get_parameter(ssm, name)
    if value is None:
        extra = {"KeyId": kms_key} if kms_key else {}  # else SSM's AWS-managed key, aws/ssm
        try:
            ssm.put_parameter(
                Name=name,
                Value=secrets.token_hex(32),
                Type="SecureString",
                Overwrite=False,
                Description="cloudburst stage cache key (seals the cache's entries)",
                Tags=[_TAG],
                **extra,
            )
        except Exception as exc:
            if error_code(exc) != "ParameterAlreadyExists":  # else: another run made it first, and it is read
                with translate("SSM", "PutParameter", name):
                    raise
        value = _get_parameter(ssm, name)
    try:
        key = bytes.fromhex(value or "")
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigurationError(
            f"the SSM parameter {name} is not a stage cache key (64 hex digits); delete it (`aws ssm "
            f"delete-parameter --name {name}`): the next run makes a new one, and recomputes what the cache held"
        )
    with _keys_lock:
        return _keys.setdefault((region, profile, name), key)


def _get_parameter(ssm: Any, name: str) -> str | None:
    """The decrypted value of parameter ``name``, or None when there is none."""
    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    except Exception as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        with translate("SSM", "GetParameter", name):
            raise


def open_fargate_cache(options: Mapping[str, object], namespace: str) -> CacheSite:
    """The namespace's cache in the set-up bucket, from the settings (``options`` first); no request is made."""
    found = resolve(options, ("bucket", "region", "profile", "kms_key"))
    bucket, region, profile = found["bucket"].value, found["region"].value, found["profile"].value
    if not bucket:
        raise NotSetUpError(
            "the stage cache of backend='fargate' lives in the set-up bucket, and none is configured: run "
            "`cloudburst setup` once (or pass bucket='my-bucket'), or compute with cache=False"
        )
    store = S3CacheStore(bucket, f"cache/{namespace}/", region, profile)
    kms_key = str(found["kms_key"].value or "")

    def read_key() -> bytes:
        return read_cache_key(region, profile, namespace, kms_key)

    return CacheSite(store, f"s3://{bucket}/cache/{namespace}/", read_key)
