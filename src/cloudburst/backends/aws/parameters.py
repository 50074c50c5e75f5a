"""A Fargate job's SSM parameters: its key (encrypted, expiring by itself), and the user's ``secrets=``."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from ...errors import CloudError
from ...log import warn
from .clients import client, error_code, translate
from .settings import FargateSettings

__all__ = ["KEY_LIFETIME_DAYS", "delete_key", "read_secrets", "store_key"]


#: a job key expires by itself after this long, whoever runs cleanup or not: as long as the job's data lives
#: (the bucket's lifecycle rule for jobs/), as a key outliving its data seals nothing anyone reads
KEY_LIFETIME_DAYS = 7


def store_key(settings: FargateSettings, job_id: str, key_hex: str, tags: Mapping[str, str]) -> str:
    """Keep the job key in an encrypted SSM parameter, tagged with the job; returns its name.

    Advanced tier, for its Expiration policy: the key is deleted by SSM after KEY_LIFETIME_DAYS even when
    the client dies and nobody runs ``cloudburst cleanup``. It costs $0.05 per parameter-month, charged
    by the hour: about $0.0001 for a job of an hour."""
    name = f"/cloudburst/jobs/{job_id}/key"
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=KEY_LIFETIME_DAYS)
    expiration = {
        "Type": "Expiration",
        "Version": "1.0",
        "Attributes": {"Timestamp": expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")},
    }
    extra = {"KeyId": settings.kms_key} if settings.kms_key else {}  # else SSM's AWS-managed key, aws/ssm
    ssm: Any = client("ssm", settings.region, settings.profile)
    with translate("SSM", "PutParameter", name):
        ssm.put_parameter(
            Name=name,
            Value=key_hex,
            Type="SecureString",
            Tier="Advanced",
            Policies=json.dumps([expiration]),
            Description="cloudburst job key (deleted with the job)",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            **extra,
        )
    return name


def read_secrets(settings: FargateSettings) -> dict[str, str]:
    """The values of ``secrets=``, read from SSM (decrypted) by this client: for workers on this machine."""
    if not settings.secrets:
        return {}
    names = {v.removeprefix("ssm:"): k for k, v in settings.secrets.items()}
    ssm: Any = client("ssm", settings.region, settings.profile)
    found: dict[str, str] = {}
    for start in range(0, len(names), 10):  # GetParameters takes ten names at most
        batch = sorted(names)[start : start + 10]
        with translate("SSM", "GetParameters", ", ".join(batch)):
            response = ssm.get_parameters(Names=batch, WithDecryption=True)
        found.update({p["Name"]: p["Value"] for p in response.get("Parameters", [])})
        missing = response.get("InvalidParameters") or []
        if missing:
            raise CloudError(
                f"secrets: the SSM parameter(s) {', '.join(missing)} do not exist (or this identity may not read "
                "them): create them with `aws ssm put-parameter --type SecureString`, or fix the path",
                service="SSM",
                operation="GetParameters",
                code="ParameterNotFound",
            )
    return {names[path]: value for path, value in found.items()}


def delete_key(region: str | None, profile: str | None, name: str) -> None:
    if not name:
        return
    try:
        client("ssm", region, profile).delete_parameter(Name=name)
    except Exception as exc:
        if error_code(exc) != "ParameterNotFound":
            warn(f"cloudburst: could not delete the job key parameter {name}: {exc}")
