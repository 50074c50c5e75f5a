"""boto3 sessions and clients, the request counter, and error translation at the boundary.

Every client comes from :func:`client`, which applies botocore's standard
retry mode (throttling and 5xx are retried with backoff by botocore itself)
and counts each request sent (``requests``), so tools and benchmarks can
report how many AWS calls a run made.
"""

from __future__ import annotations

import collections
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from ...errors import CloudError

__all__ = ["client", "clients_from", "error_code", "requests", "session", "translate"]

#: "service.Operation" -> number of HTTP requests sent by this process (retries included)
requests: collections.Counter[str] = collections.Counter()
_requests_lock = threading.Lock()
_sessions: dict[tuple[str | None, str | None, str | None], boto3.session.Session] = {}
_clients: dict[tuple[str | None, str | None, str, str | None], Any] = {}
_lock = threading.Lock()

_CONFIG = botocore.config.Config(
    retries={"mode": "standard", "max_attempts": 6},
    max_pool_connections=64,
    connect_timeout=10,
    read_timeout=40,  # above SQS's 20 s long poll
)


def _count(event_name: str, **_: Any) -> None:
    # event_name is "before-send.<service>.<Operation>"
    name = event_name.partition(".")[2]
    with _requests_lock:
        requests[name] += 1


def session(region: str | None = None, profile: str | None = None) -> boto3.session.Session:
    """A boto3 session, cached per (region, profile); boto3's usual resolution fills what is None."""
    key = (region, profile, os.environ.get("AWS_ENDPOINT_URL"))
    with _lock:
        found = _sessions.get(key)
        if found is None:
            found = boto3.session.Session(region_name=region, profile_name=profile)
            found.events.register("before-send", _count)
            _sessions[key] = found
        return found


#: (service, region, config) -> a client: where client() takes its clients in this context instead
ClientFactory = Callable[[str, str | None, botocore.config.Config], Any]
_factory: contextvars.ContextVar[ClientFactory | None] = contextvars.ContextVar("cloudburst_clients", default=None)


@contextmanager
def clients_from(factory: ClientFactory) -> Iterator[None]:
    """Within the block (this thread or task only), :func:`client` returns ``factory``'s clients: another
    identity than this process's, as an emulated task running on a thread of this process has."""
    token = _factory.set(factory)
    try:
        yield
    finally:
        _factory.reset(token)


def client(service: str, region: str | None = None, profile: str | None = None) -> Any:
    """A thread-safe, cached boto3 client for ``service``."""
    factory = _factory.get()
    if factory is not None:
        return factory(service, region, _CONFIG)
    key = (region, profile, service, os.environ.get("AWS_ENDPOINT_URL"))
    with _lock:
        found = _clients.get(key)
    if found is not None:
        return found
    made = session(region, profile).client(service, config=_CONFIG)
    with _lock:
        return _clients.setdefault(key, made)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


#: AWS error codes of a throttled or briefly failing service: worth backing off and trying again. A
#: CloudError without a code (a dropped connection, a timeout inside botocore) counts too.
TRANSIENT_CODES = frozenset(
    {
        "",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "ServerException",
        "RequestTimeout",
        "500",
        "503",
    }
)


def is_transient(exc: BaseException) -> bool:
    """A translated AWS error worth waiting out: throttling, a 5xx, a dropped connection."""
    if isinstance(exc, CloudError):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, TimeoutError))


#: AWS error codes of a job's queue or bucket that no longer exists: the job ended
GONE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NoSuchBucket"})


def is_gone(exc: BaseException) -> bool:
    """A translated AWS error saying the queue or bucket asked for was deleted."""
    return isinstance(exc, CloudError) and exc.code in GONE_CODES


@contextmanager
def translate(service: str, operation: str, what: str = "") -> Iterator[None]:
    """Turn botocore errors into :class:`CloudError` with a message that names the fix."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError as exc:
        raise CloudError(
            f"{service} {operation}: no AWS credentials found. Configure them (aws configure, AWS_PROFILE, "
            "or environment variables), or use backend='local'.",
            service=service,
            operation=operation,
            code="NoCredentials",
        ) from exc
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", str(exc))
        hint = _HINTS.get(code, "")
        raise CloudError(
            f"{service} {operation}{' ' + what if what else ''} failed: {code}: {message}{hint}",
            service=service,
            operation=operation,
            code=code,
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise CloudError(
            f"{service} {operation}{' ' + what if what else ''} failed: {exc}", service=service, operation=operation
        ) from exc


_HINTS = {
    "AccessDenied": ". Your AWS identity lacks a permission; run `cloudburst doctor` to see which.",
    "AccessDeniedException": ". Your AWS identity lacks a permission; run `cloudburst doctor` to see which.",
    "NoSuchBucket": ". The configured bucket is gone; run `cloudburst setup` to create it again.",
    "ClusterNotFoundException": ". The configured ECS cluster is gone; run `cloudburst setup` to repair it.",
    "ExpiredToken": ". Your AWS session has expired; log in again (e.g. `aws sso login`).",
}
