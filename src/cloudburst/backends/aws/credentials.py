"""Hand a process the credentials of one role, and of no other, the way ECS hands them to a task.

::

    endpoint = CredentialsEndpoint(lambda: assume(role_arn))   # any source of short-lived credentials
    env = {**endpoint.environment(), ...}                      # the child's AWS settings: only this
    ...
    endpoint.close()

The endpoint listens on loopback with a random bearer token (botocore's container provider sends
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` and accepts a full URI only on a loopback address), so another
user's process on the machine cannot read it. Credentials are fetched again before they expire, so
a long job never runs on stale ones. The child's environment points botocore away from the user's
own files and variables: the container provider is the only source it finds.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["AWS_IDENTITY_VARIABLES", "Credentials", "CredentialsEndpoint"]

#: what a Credentials source returns: STS's ``Credentials`` shape (AccessKeyId, SecretAccessKey,
#: SessionToken, Expiration as a datetime)
Credentials = Mapping[str, Any]

#: variables that would give a child another identity than the one served; removed from its environment
AWS_IDENTITY_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)

_REFRESH_BEFORE = timedelta(minutes=10)  # botocore itself refreshes 15 and 10 minutes before expiry


class CredentialsEndpoint:
    """Serves one role's credentials on loopback, fetching them again before they expire."""

    def __init__(self, fetch: Callable[[], Credentials]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._current: Credentials | None = None
        self.token = secrets.token_hex(32)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="cloudburst-credentials", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/credentials"

    def environment(self) -> dict[str, str]:
        """What a child's environment needs for botocore to take these credentials and only these
        (remove :data:`AWS_IDENTITY_VARIABLES` from what it inherits first)."""
        return {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.url,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token,
            # botocore reads the user's credentials and config files before the container provider
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_CONFIG_FILE": "/dev/null",
        }

    def credentials(self) -> Credentials:
        """The current credentials, fetched again when they are near their expiry."""
        with self._lock:
            current = self._current
            if current is None or _expires_soon(current):
                current = self._current = self._fetch()
            return current

    def close(self) -> None:
        """Stop serving; a child asking afterwards gets no answer."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _expires_soon(credentials: Credentials) -> bool:
    expiration = credentials.get("Expiration")
    if not isinstance(expiration, datetime):
        return False
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=timezone.utc)
    return expiration - datetime.now(timezone.utc) < _REFRESH_BEFORE


def _handler(endpoint: CredentialsEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            given = self.headers.get("Authorization") or ""
            if not hmac.compare_digest(given.encode(), endpoint.token.encode()):
                self._answer(401, {"message": "wrong or missing token"})
                return
            try:
                found = endpoint.credentials()
            except Exception as exc:  # the child sees why; the client's own output names it too
                self._answer(500, {"message": f"could not get credentials: {exc}"})
                return
            expiration = found.get("Expiration")
            self._answer(
                200,
                {
                    "AccessKeyId": found["AccessKeyId"],
                    "SecretAccessKey": found["SecretAccessKey"],
                    "Token": found.get("SessionToken", ""),
                    "Expiration": expiration.isoformat() if isinstance(expiration, datetime) else str(expiration),
                },
            )

        def _answer(self, status: int, body: Mapping[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests carry credentials: nothing of them is logged

    return Handler
