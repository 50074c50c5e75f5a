"""Bucket policies in the emulator: the ``aws:SecureTransport`` condition, which moto ignores.

moto applies a bucket policy's Deny statements whatever their conditions. cloudburst's bucket
denies requests made without TLS (``"Bool": {"aws:SecureTransport": "false"}``), so under moto
that statement would deny every request. The emulator stands in for S3's HTTPS endpoint (its
plain HTTP never leaves loopback), so its requests count as made over TLS: a statement that applies
only to requests without TLS is left out of moto's evaluation. Every other statement is moto's to judge.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["count_loopback_as_tls"]

_INSECURE_ONLY = {"Bool": {"aws:SecureTransport": "false"}}


def count_loopback_as_tls() -> None:
    """Make moto leave out bucket-policy statements that apply only to requests without TLS (idempotent)."""
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    if getattr(FakeBucket.get_permission, "counts_loopback_as_tls", False):
        return

    def get_permission(self: Any, action: str, resource: str) -> Any:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        document = json.loads(self.policy)
        statements = document.get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else statements
        kept = [s for s in statements if s.get("Condition") != _INSECURE_ONLY]
        if not kept:
            return PermissionResult.NEUTRAL
        return IAMPolicy(json.dumps({**document, "Statement": kept})).is_action_permitted(action, resource)

    get_permission.counts_loopback_as_tls = True  # type: ignore[attr-defined]
    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]
