"""The S3 store: a job's blobs below ``jobs/<job id>/`` in the configured bucket.

Large blobs go through boto3's managed transfer (parallel multipart upload and
ranged download); small ones are one request each. Blobs are content-addressed,
so the core asks ``exists`` before uploading and skips what is there.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import boto3.s3.transfer

from ..base import Store
from .clients import error_code, translate
from .owner import s3_client

__all__ = ["S3Store"]

_MULTIPART_THRESHOLD = 16 << 20
_TRANSFER = boto3.s3.transfer.TransferConfig(
    multipart_threshold=_MULTIPART_THRESHOLD, multipart_chunksize=16 << 20, max_concurrency=8
)


#: CopyObject copies up to 5 GB in one request; a bigger blob is copied in parts, server-side too
_COPY = boto3.s3.transfer.TransferConfig(multipart_threshold=5 << 30, multipart_chunksize=512 << 20, max_concurrency=8)


class S3Store:
    """Blobs by key below ``s3://bucket/prefix``. Implements the Store contract."""

    def __init__(self, bucket: str, prefix: str, region: str | None = None, profile: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/"
        self._s3: Any = s3_client(bucket, region, profile)  # every request names the bucket's owner

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put(self, key: str, data: bytes | memoryview) -> None:
        with translate("S3", "PutObject", f"s3://{self.bucket}/{self._key(key)}"):
            if memoryview(data).nbytes < _MULTIPART_THRESHOLD:
                self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))
            else:
                self._s3.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key), Config=_TRANSFER)

    def copy_from(self, src: Store, src_key: str, dst_key: str) -> bool:
        """Copy ``src_key`` of another store in this bucket here, server-side (CopyObject; in parts above
        5 GB). False when ``src`` is not in this bucket."""
        if not isinstance(src, S3Store) or src.bucket != self.bucket:
            return False
        source, target = src._key(src_key), self._key(dst_key)
        if source == target:
            return True  # already here
        with translate("S3", "CopyObject", f"s3://{self.bucket}/{source} to {target}"):
            try:
                self._s3.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target, Config=_COPY)
            except Exception as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    raise FileNotFoundError(f"s3://{self.bucket}/{source} does not exist") from exc
                raise
        return True

    def get(self, key: str) -> bytes:
        with translate("S3", "GetObject", f"s3://{self.bucket}/{self._key(key)}"):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            except self._s3.exceptions.NoSuchKey as exc:
                raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)} does not exist") from exc
            data: bytes = response["Body"].read()
            return data

    def get_file(self, key: str, cache_dir: Path) -> Path:
        path = cache_dir / key.replace("/", "_")
        if path.exists():
            return path
        partial = path.with_suffix(".partial")
        with translate("S3", "GetObject", f"s3://{self.bucket}/{self._key(key)}"):
            self._s3.download_file(self.bucket, self._key(key), str(partial), Config=_TRANSFER)
        partial.replace(path)
        return path

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            with translate("S3", "HeadObject", f"s3://{self.bucket}/{self._key(key)}"):
                raise

    def delete_prefix(self, prefix: str) -> None:
        full = self._key(prefix) if prefix else self.prefix
        with translate("S3", "DeleteObjects", f"s3://{self.bucket}/{full}"):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
