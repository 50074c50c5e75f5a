"""EMULATION: moto's AWS server behind a thin WSGI layer that counts calls, injects faults, and serves
what moto lacks (Service Quotas for Fargate, the Price List API).

::

    boto3 ──HTTP──► Gateway ──► counts "service.Operation"
                       ├── a fault rule matches? ─► ThrottlingException / ServerException / RunTask failures
                       ├── servicequotas, pricing ─► served here (moto has none for Fargate)
                       └── everything else ───────► moto (S3, SQS, ECS, IAM, EC2, Logs, STS, ECR ...)
"""

from __future__ import annotations

import collections
import io
import json
import random
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..backends.aws.pricing import EMULATED_MARK

__all__ = ["FaultRule", "Gateway", "PricingStub", "QuotaStub", "quiet_handler"]

StartResponse = Callable[..., Any]

# Fargate prices in us-east-1 (Linux), as the Price List API reports them.
DEFAULT_PRICES = {
    "USE1-Fargate-vCPU-Hours:perCPU": 0.04048,
    "USE1-Fargate-GB-Hours": 0.004445,
    "USE1-Fargate-ARM-vCPU-Hours:perCPU": 0.03238,
    "USE1-Fargate-ARM-GB-Hours": 0.00356,
    "USE1-Fargate-EphemeralStorage-GB-Hours": 0.000111,
}


@dataclass
class FaultRule:
    """Make ``service.operation`` fail: the next ``times`` calls, or a ``share`` of all calls."""

    service: str
    operation: str
    code: str = "ThrottlingException"
    status: int = 400
    message: str = "Rate exceeded"
    times: int | None = None
    share: float = 0.0
    #: RunTask only: answer 200 with this reason in ``failures`` (as AWS does when capacity is short)
    run_task_failure: str = ""
    hits: int = 0

    def applies(self, service: str, operation: str) -> bool:
        if service != self.service or operation != self.operation:
            return False
        if self.times is not None:
            if self.hits >= self.times:
                return False
        elif random.random() >= self.share:
            return False
        self.hits += 1
        return True


class QuotaStub:
    """Service Quotas for ServiceCode ``fargate``: quotas, usage and increase requests."""

    ON_DEMAND = "L-3032A538"
    SPOT = "L-36FBB829"

    def __init__(self, on_demand: float = 4000, spot: float = 4000) -> None:
        self.values = {self.ON_DEMAND: float(on_demand), self.SPOT: float(spot)}
        self.requests: list[dict[str, Any]] = []
        self._ids = 0

    def _quota(self, code: str) -> dict[str, Any]:
        name = {
            self.ON_DEMAND: "Fargate On-Demand vCPU resource count",
            self.SPOT: "Fargate Spot vCPU resource count",
        }[code]
        return {
            "ServiceCode": "fargate",
            "ServiceName": "AWS Fargate",
            "QuotaArn": f"arn:aws:servicequotas:us-east-1:123456789012:fargate/{code}",
            "QuotaCode": code,
            "QuotaName": name,
            "Value": self.values[code],
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }

    def handle(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        code = body.get("QuotaCode", "")
        if operation in ("GetServiceQuota", "GetAWSDefaultServiceQuota"):
            if body.get("ServiceCode") != "fargate" or code not in self.values:
                return 400, {"__type": "NoSuchResourceException", "message": f"quota {code} not found"}
            return 200, {"Quota": self._quota(code)}
        if operation == "ListServiceQuotas":
            return 200, {"Quotas": [self._quota(c) for c in self.values]}
        if operation == "RequestServiceQuotaIncrease":
            if code not in self.values:
                return 400, {"__type": "NoSuchResourceException", "message": f"quota {code} not found"}
            self._ids += 1
            request = {
                "Id": f"req-{self._ids}",
                "ServiceCode": "fargate",
                "QuotaCode": code,
                "DesiredValue": float(body.get("DesiredValue", 0)),
                "Status": "PENDING",
                "Created": 1.7e9,
            }
            self.requests.append(request)
            return 200, {"RequestedQuota": request}
        if operation in ("ListRequestedServiceQuotaChangeHistoryByQuota", "ListRequestedServiceQuotaChangeHistory"):
            found = [r for r in self.requests if not code or r["QuotaCode"] == code]
            return 200, {"RequestedQuotas": found}
        return 400, {"__type": "InvalidAction", "message": f"{operation} is not emulated"}


class PricingStub:
    """The Price List API's ``GetProducts`` for AmazonECS Fargate usage types."""

    def __init__(self, prices: dict[str, float] | None = None) -> None:
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)

    def handle(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if operation != "GetProducts":
            return 400, {"__type": "InvalidAction", "message": f"{operation} is not emulated"}
        filters = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
        items = []
        for usage, price in self.prices.items():
            if "usagetype" in filters and filters["usagetype"] != usage:
                continue
            product = {
                "product": {
                    # marked, so that what these prices were made from is said truthfully
                    "attributes": {"usagetype": usage, "servicecode": "AmazonECS", EMULATED_MARK: "true"},
                    "sku": usage,
                },
                "terms": {
                    "OnDemand": {
                        f"{usage}.JRTCKXETXF": {
                            "priceDimensions": {
                                f"{usage}.JRTCKXETXF.6YS6EN2CT7": {
                                    "unit": "hours",
                                    "pricePerUnit": {"USD": f"{price:.7f}"},
                                }
                            }
                        }
                    }
                },
            }
            items.append(json.dumps(product))
        return 200, {"PriceList": items, "FormatVersion": "aws_v1"}


@dataclass
class Gateway:
    """The WSGI application in front of moto."""

    moto_app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
    quotas: QuotaStub = field(default_factory=QuotaStub)
    pricing: PricingStub = field(default_factory=PricingStub)
    faults: list[FaultRule] = field(default_factory=list)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    #: the same, for the requests signed with the emulator's own clients' keys (not workers', not admin's)
    client_calls: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: called with the StartBuild request and image URI of every build started (moto's builds run nothing)
    on_build: Callable[[dict[str, Any], str], None] | None = None
    #: the environment variables each StartBuild asked for, as sent
    build_variables: list[list[dict[str, str]]] = field(default_factory=list)
    #: the access keys of the emulator's own clients, and the task definitions they registered
    client_keys: set[str] = field(default_factory=set)
    registered: set[str] = field(default_factory=set)
    #: moto's application for each JSON service (by X-Amz-Target prefix), found once by moto's dispatcher
    _apps: dict[str, Callable[[dict[str, Any], StartResponse], Iterable[bytes]]] = field(default_factory=dict)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        service = _service_of(environ)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            operation = target.rsplit(".", 1)[-1]
        elif environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            operation = _form_action(environ)  # the query protocol (IAM, EC2, STS)
        else:
            operation = _rest_operation(environ)
        with self.lock:
            self.calls[f"{service}.{operation}"] += 1
            if _access_key_of(environ) in self.client_keys:
                self.client_calls[f"{service}.{operation}"] += 1
            rule = next((r for r in self.faults if r.applies(service, operation)), None)
        if rule is not None:
            if rule.run_task_failure:
                failure = {"arn": "", "reason": rule.run_task_failure}
                return _json(start_response, 200, {"tasks": [], "failures": [failure]})
            if not target and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
                return _query_error(start_response, rule.status, rule.code, rule.message)
            return _json(start_response, rule.status, {"__type": rule.code, "message": rule.message})
        if service == "codebuild" and operation == "StartBuild":
            return self._start_build(environ, start_response)
        if service == "ecs" and operation == "RegisterTaskDefinition":
            return self._register(environ, start_response)
        if service in ("servicequotas", "pricing"):
            body = _read_json(environ)
            stub = self.quotas if service == "servicequotas" else self.pricing
            status, payload = stub.handle(operation, body)
            return _json(start_response, status, payload)
        return self._moto(environ, start_response)

    def _moto(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """moto's answer. moto's dispatcher finds each request's service under one lock, which a thousand
        workers' requests queue for; a JSON service's application is found once, by its X-Amz-Target."""
        prefix = environ.get("HTTP_X_AMZ_TARGET", "").partition(".")[0]
        find = getattr(self.moto_app, "get_application", None)
        if not prefix or find is None:
            return self.moto_app(environ, start_response)
        app = self._apps.get(prefix)
        if app is None:
            app = self._apps.setdefault(prefix, find(environ))
        return app(environ, start_response)

    def _answered(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> tuple[list[bytes], dict[str, Any] | None]:
        """moto's answer, passed on; and its JSON body when it succeeded."""
        status: list[str] = []

        def remember(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *rest)

        body = list(self._moto(environ, remember))
        if not status or not status[0].startswith("200"):
            return body, None
        try:
            loaded = json.loads(b"".join(body) or b"{}")
        except ValueError:
            return body, None
        return body, loaded if isinstance(loaded, dict) else None

    def _register(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """RegisterTaskDefinition: remembered when the emulator's own client made it (the agent runs no other)."""
        body, answer = self._answered(environ, start_response)
        if answer is not None and _access_key_of(environ) in self.client_keys:
            with self.lock:
                self.registered.add(str(answer["taskDefinition"]["taskDefinitionArn"]))
        return body

    def _start_build(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """StartBuild: once moto has accepted it, the build 'runs' (on_build)."""
        request = _read_json(environ)
        variables = request.get("environmentVariablesOverride", [])
        body, answer = self._answered(environ, start_response)
        if answer is None:
            return body
        self.build_variables.append(variables)
        image = next((v["value"] for v in variables if v.get("name") == "IMAGE_URI"), "")
        if image and self.on_build is not None:
            self.on_build(request, image)  # what the build's `docker push` does
        return body


def _access_key_of(environ: dict[str, Any]) -> str:
    """The access key id a SigV4-signed request names."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    return str(auth.partition("Credential=")[2].partition("/")[0])


def _service_of(environ: dict[str, Any]) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        scope = auth.split(",")[0].split()[1]
        return str(scope.split("/")[3]).lower()
    except (IndexError, ValueError):
        return "unknown"


def _rest_operation(environ: dict[str, Any]) -> str:
    """A name for a REST call (S3): its method and whether it names an object."""
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if "Action=" in query:
        return str(query.split("Action=", 1)[1].split("&", 1)[0])
    kind = "Object" if path.strip("/").count("/") >= 1 else "Bucket"
    return f"{environ.get('REQUEST_METHOD', 'GET')}{kind}"


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, left readable for moto."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw: bytes = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    return raw


def _form_action(environ: dict[str, Any]) -> str:
    fields = urllib.parse.parse_qs(_read_body(environ).decode("utf-8", "replace"))
    return fields.get("Action", ["Unknown"])[0]


def _read_json(environ: dict[str, Any]) -> dict[str, Any]:
    raw = _read_body(environ)
    try:
        loaded = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _query_error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
    """An error as the query protocol (IAM, EC2, STS) answers it: XML."""
    from xml.sax.saxutils import escape

    data = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error><RequestId>emulated</RequestId></ErrorResponse>"
    ).encode()
    start_response(f"{status} Error", [("Content-Type", "text/xml"), ("Content-Length", str(len(data)))])
    return [data]


def _json(start_response: StartResponse, status: int, payload: dict[str, Any]) -> list[bytes]:
    data = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "")
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(data)))],
    )
    return [data]


def quiet_handler() -> type[Any]:
    """moto's request handler without a log line per request."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    return QuietHandler
