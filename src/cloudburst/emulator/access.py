"""EMULATION: IAM enforced on every request moto answers, against the real ARN of what it touches.

::

    request ─► moto checks the access key and the signature (InvalidClientTokenId, SignatureDoesNotMatch)
            ─► checks(): the IAM actions the request needs, each with its resource ARN and condition keys
            ─► policy.py: the caller's identity policies (and its role's permissions boundary), and for
               sts:AssumeRole the role's trust policy ─► AccessDenied, or moto answers

moto's own access control checks most services against resource ``"*"``, so a policy scoped to a
queue, a parameter or a role either denies everything or is never put to the test. Here the resource
is the one AWS evaluates: SQS ``QueueUrl``/``QueueName`` → the queue's ARN; SSM ``Name``/``Names``/
``Path`` → the parameter's ARN; ECS → the cluster, task definition or task ARN (``ecs:cluster`` set for
RunTask, StopTask, DescribeTasks, ListTasks); Logs → the log group (and stream) ARN; IAM ``RoleName`` →
the role's ARN with its path, ``PolicyArn``; ECR ``repositoryName`` → the repository's ARN; CodeBuild
→ the project's ARN; STS AssumeRole → ``RoleArn`` (and the role's trust policy must let the caller in);
S3 → the bucket or object, as moto already does (``s3:prefix`` set for listings). Passing a role
(RunTask's ``overrides.taskRoleArn`` and the task definition's roles, RegisterTaskDefinition's roles,
CodeBuild's ``serviceRole``) needs ``iam:PassRole`` on it with ``iam:PassedToService``, as in AWS.
EC2, CloudWatch and the actions cloudburst's policies grant on ``"*"`` are checked against ``"*"``.

What is NOT evaluated here, and where the tests check it by reading the document instead
(tests/test_iam_enforced.py):

* resource-based policies: the bucket policy (its ``aws:SecureTransport`` Deny: the emulator speaks
  plain HTTP on loopback), queue policies, KMS key policies; SCPs and session policies;
* condition keys a request here does not carry: ``aws:SourceAccount``/``aws:SourceArn`` are evaluated only
  when the emulated ECS agent or CodeBuild takes a role (agent.py, __init__.py), never on an API call;
  ``iam:PassedToService`` only on the passes listed above; any other key counts as missing;
* Service Quotas and Pricing, which the gateway serves itself (server.py): answered without a check.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from .policy import allows, denies, trusts

__all__ = ["Caller", "Check", "enforcing", "find_role", "install", "role_caller", "uninstall"]

_lock = threading.Lock()
_original: Any = None
_saved_count: float | None = None

#: signing names that are not the IAM service prefix
_SERVICE_PREFIX = {"monitoring": "cloudwatch"}
#: requests whose IAM action has another name: S3's as moto names them, and SQS's batches, which IAM
#: authorizes as their one-message action
_ACTIONS = {
    "s3:HeadBucket": "s3:ListBucket",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


@dataclass(frozen=True)
class Check:
    """One IAM action a request needs: on this resource, with these condition keys."""

    action: str
    resource: str
    context: Mapping[str, list[str]]


@dataclass(frozen=True)
class Caller:
    """Who signed a request: its principal ARN, its identity policies and its permissions boundary."""

    arn: str
    documents: list[str]
    boundary: str | None

    def may(self, check: Check) -> bool:
        """IAM's answer: no explicit Deny, an Allow in the identity policies, and one in the boundary."""
        context = {"aws:principalarn": [self.arn], **check.context}
        everything = [*self.documents, *([self.boundary] if self.boundary else [])]
        if denies(everything, check.action, check.resource, context):
            return False
        if not allows(self.documents, check.action, check.resource, context):
            return False
        return self.boundary is None or allows([self.boundary], check.action, check.resource, context)


def enforcing() -> bool:
    """Is IAM enforced on requests to moto in this process?"""
    return _original is not None


def install() -> None:
    """Enforce IAM on every request moto answers in this process (moto's access control, with the
    resource and evaluation described above)."""
    global _original, _saved_count
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    with _lock:
        if _original is not None:
            return
        _original = ActionAuthenticatorMixin._authenticate_and_authorize_action
        _saved_count = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # moto's switch: every request is authenticated
        ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize  # type: ignore[method-assign]


def uninstall() -> None:
    """Back to moto's defaults: no access control."""
    global _original, _saved_count
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    with _lock:
        if _original is None:
            return
        ActionAuthenticatorMixin._authenticate_and_authorize_action = _original  # type: ignore[method-assign]
        settings.INITIAL_NO_AUTH_ACTION_COUNT = _saved_count if _saved_count is not None else float("inf")
        _original = None


def _authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
    """moto's hook, called by every response class before it acts (``resource``: moto's guess)."""
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.exceptions import JsonRESTError, _RESTError

    target = self.headers.get("X-Amz-Target")
    if target in ActionAuthenticatorMixin.PUBLIC_OPERATIONS:
        return
    try:
        _check(self, iam_request_cls, resource)
    except _RESTError as exc:
        # moto words these errors in XML; a JSON-protocol client (SQS, SSM, ECS ...) reads only JSON
        if target and not isinstance(exc, JsonRESTError):
            raise exc.to_json() from None
        raise


def _check(self: Any, iam_request_cls: type, resource: str) -> None:
    path = self.raw_path + (f"?{urlparse(self.uri).query}" if urlparse(self.uri).query else "")
    request = iam_request_cls(
        account_id=self.current_account,
        method=self.method,
        path=path,
        data=self.data,
        body=self.raw_body,
        headers=self.headers,
        action=self._get_action(),
    )  # an unknown access key raises InvalidClientTokenId (S3: InvalidAccessKeyId) here
    request.check_signature()
    service, _, action = request._action.partition(":")
    service = _SERVICE_PREFIX.get(service, service)
    service, _, action = _ACTIONS.get(f"{service}:{action}", f"{service}:{action}").partition(":")
    if service == "sts" and action == "GetCallerIdentity":
        return  # allowed to everyone, as in AWS
    caller = caller_of(request._access_key)
    if caller is None:
        request._raise_access_denied()  # a session of a role deleted since
    assert caller is not None
    for check in checks(self, service, action, resource):
        if not caller.may(check):
            request._raise_access_denied()
        if check.action == "sts:AssumeRole" and not _trusted(caller, check.resource):
            request._raise_access_denied()


def caller_of(access_key: Any) -> Caller | None:
    """The principal behind one of moto's access-key objects (a user's key, or a role session's)."""
    backend = access_key.backend
    user_name = getattr(access_key, "_owner_user_name", None)
    if user_name is not None:
        user = backend.get_user(user_name)
        documents = [*user.policies.values(), *(_default_document(p) for p in user.managed_policies.values())]
        return Caller(user.arn, documents, None)
    role = find_role(backend, name=access_key._owner_role_name)
    if role is None:
        return None
    return role_caller(backend, role)


def role_caller(backend: Any, role: Any) -> Caller:
    """A role's sessions as a caller: its inline and attached policies, its permissions boundary."""
    documents = [*role.policies.values(), *(_default_document(p) for p in role.managed_policies.values())]
    boundary = None
    if role.permissions_boundary_arn:
        try:
            boundary = _default_document(backend.get_policy(role.permissions_boundary_arn))
        except Exception:
            boundary = '{"Statement": []}'  # a boundary that is gone allows nothing
    return Caller(role.arn, documents, boundary)


def _default_document(managed: Any) -> str:
    return str(next(v.document for v in managed.versions if v.is_default))


def find_role(backend: Any, *, name: str = "", arn: str = "") -> Any:
    """One of moto's roles, by name or ARN; None when there is none."""
    for role in list(backend.roles.values()):
        if (name and role.name == name) or (arn and role.arn == arn):
            return role
    return None


def _trusted(caller: Caller, role_arn: str) -> bool:
    from moto.iam.models import iam_backends

    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    role = find_role(iam_backends[account]["aws"], arn=role_arn) if account in iam_backends else None
    return role is not None and trusts(role.assume_role_policy_document, caller.arn, {"aws:principalarn": [caller.arn]})


# ---------------------------------------------------------------------------------------------- resources
def _params(response: Any) -> dict[str, Any]:
    """The request's parameters: its JSON body, or its query/form fields (first value of each)."""
    body = response.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.lstrip().startswith("{"):
        try:
            loaded = json.loads(body)
            if isinstance(loaded, dict):
                return loaded
        except ValueError:
            pass
    found: dict[str, Any] = {}
    for key, value in (response.querystring or {}).items():
        found[key] = value[0] if isinstance(value, list) and value else value
    return found


def checks(response: Any, service: str, action: str, moto_resource: str) -> list[Check]:
    """The IAM checks one request needs."""
    account, region = response.current_account, response.region
    params = _params(response)
    arn = _Arns(account, region)
    name = f"{service}:{action}"
    finder = _RESOURCES.get(service)
    if service == "s3":
        context = {"s3:prefix": [params["prefix"]]} if "prefix" in params else {}
        return [Check(name, moto_resource, context)]
    found: list[Check] = list(finder(arn, action, params, name)) if finder else [Check(name, "*", {})]
    return found + list(_passes(response, service, action, params, arn))


class _Arns:
    def __init__(self, account: str, region: str) -> None:
        self.account, self.region = account, region

    def __call__(self, service: str, resource: str, *, region: bool = True) -> str:
        return f"arn:aws:{service}:{self.region if region else ''}:{self.account}:{resource}"


def _sqs(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    url = str(params.get("QueueUrl") or "")
    queue = url.rstrip("/").rsplit("/", 1)[-1] if url else str(params.get("QueueName") or "")
    yield Check(name, arn("sqs", queue) if queue else "*", {})


def _ssm(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    names = params.get("Names") or ([params["Name"]] if "Name" in params else [])
    if "Path" in params:
        names = [params["Path"]]
    if params.get("ResourceType") == "Parameter" and "ResourceId" in params:
        names = [params["ResourceId"]]
    for parameter in names or ["*"]:
        parameter = str(parameter)
        if parameter.startswith("arn:"):
            yield Check(name, parameter, {})
        else:
            yield Check(name, "*" if parameter == "*" else arn("ssm", f"parameter/{parameter.lstrip('/')}"), {})


_ECS_CLUSTER_SCOPED = {"RunTask", "StopTask", "DescribeTasks", "ListTasks"}


def _ecs(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    cluster = str(params.get("cluster") or params.get("clusterName") or "default")
    cluster_arn = cluster if cluster.startswith("arn:") else arn("ecs", f"cluster/{cluster}")
    cluster_name = cluster_arn.rsplit("/", 1)[-1]
    context = {"ecs:cluster": [cluster_arn]} if action in _ECS_CLUSTER_SCOPED else {}
    if action == "RunTask":
        definition = str(params.get("taskDefinition") or "")
        if not definition.startswith("arn:"):
            definition = arn("ecs", f"task-definition/{definition}")
        yield Check(name, definition, context)
    elif action in ("StopTask", "DescribeTasks"):
        tasks = params.get("tasks") or [params.get("task", "")]
        for task in tasks:
            task = str(task)
            yield Check(name, task if task.startswith("arn:") else arn("ecs", f"task/{cluster_name}/{task}"), context)
    elif action in ("TagResource", "UntagResource", "ListTagsForResource"):
        yield Check(name, str(params.get("resourceArn") or "*"), {})
    elif action in ("DescribeClusters",):
        for one in params.get("clusters") or ["default"]:
            one = str(one)
            yield Check(name, one if one.startswith("arn:") else arn("ecs", f"cluster/{one}"), {})
    elif "cluster" in params or "clusterName" in params or action in _ECS_CLUSTER_SCOPED:
        yield Check(name, cluster_arn, context)
    else:
        yield Check(name, "*", {})  # RegisterTaskDefinition, DescribeTaskDefinition, ListClusters ...


def _logs(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    group = str(params.get("logGroupName") or params.get("logGroupIdentifier") or "")
    if "resourceArn" in params:
        yield Check(name, str(params["resourceArn"]), {})
    elif group.startswith("arn:"):
        yield Check(name, group.removesuffix(":*"), {})
    elif group:
        stream = params.get("logStreamName")
        suffix = f":log-stream:{stream}" if stream else ""
        yield Check(name, arn("logs", f"log-group:{group}{suffix}"), {})
    else:
        yield Check(name, "*", {})


def _iam(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    from moto.iam.models import iam_backends

    backend = iam_backends[arn.account]["aws"]
    if "RoleName" in params:
        role = find_role(backend, name=str(params["RoleName"]))
        path = str(params.get("Path") or "/") if role is None else role.path
        resource = role.arn if role is not None else arn("iam", f"role{path}{params['RoleName']}", region=False)
        boundary = params.get("PermissionsBoundary") if action == "CreateRole" else None
        if action == "PutRolePolicy" and role is not None:
            boundary = role.permissions_boundary_arn
        yield Check(name, resource, {"iam:permissionsboundary": [str(boundary)]} if boundary else {})
    elif "PolicyArn" in params:
        yield Check(name, str(params["PolicyArn"]), {})
    elif action == "CreatePolicy":
        path = str(params.get("Path") or "/")
        yield Check(name, arn("iam", f"policy{path}{params.get('PolicyName', '')}", region=False), {})
    else:
        yield Check(name, "*", {})


def _ecr(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    names = params.get("repositoryNames") or ([params["repositoryName"]] if "repositoryName" in params else [])
    if "resourceArn" in params:
        names = [str(params["resourceArn"]).rsplit("/", 1)[-1]]
    for repository in names or ["*"]:
        yield Check(name, "*" if repository == "*" else arn("ecr", f"repository/{repository}"), {})


def _codebuild(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    projects = params.get("names") or params.get("projects") or []
    for key in ("projectName", "name", "project"):
        if key in params:
            projects = [params[key]]
    projects = projects or [str(i).split(":", 1)[0] for i in params.get("ids") or []]
    for project in projects or ["*"]:
        project = str(project)
        if project.startswith("arn:") or project == "*":
            yield Check(name, project, {})
        else:
            yield Check(name, arn("codebuild", f"project/{project}"), {})


def _kms(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    """A key named any way (id, ARN, alias, alias ARN) is checked as its key ARN, with the aliases that
    point at it as ``kms:ResourceAliases``; an alias operation is checked on the alias and its key."""
    from moto.kms.models import kms_backends

    backend = kms_backends[arn.account][arn.region]
    named = str(params.get("KeyId") or params.get("TargetKeyId") or "")
    alias = str(params.get("AliasName") or "")
    if alias:
        yield Check(name, arn("kms", alias), {})
        named = named or alias
    if not named:
        yield Check(name, "*", {})
        return
    try:
        key_id = backend.any_id_to_key_id(named)
        key = backend.keys[key_id]
    except Exception:  # no such key: KMS answers NotFound, which moto does after this (no check)
        return
    yield Check(name, arn("kms", f"key/{key_id}"), {"kms:resourcealiases": sorted(key.aliases)})


def _sts(arn: _Arns, action: str, params: Mapping[str, Any], name: str) -> Iterator[Check]:
    yield Check(name, str(params.get("RoleArn") or "*"), {})


_RESOURCES = {
    "sqs": _sqs,
    "ssm": _ssm,
    "ecs": _ecs,
    "logs": _logs,
    "iam": _iam,
    "ecr": _ecr,
    "codebuild": _codebuild,
    "sts": _sts,
    "kms": _kms,
}


def _passes(response: Any, service: str, action: str, params: Mapping[str, Any], arn: _Arns) -> Iterator[Check]:
    """``iam:PassRole`` for every role a request hands to a service."""
    roles: list[str] = []
    to = "ecs-tasks.amazonaws.com"
    if service == "ecs" and action == "RegisterTaskDefinition":
        roles = [params.get("taskRoleArn", ""), params.get("executionRoleArn", "")]
    elif service == "ecs" and action == "RunTask":
        overrides = params.get("overrides") or {}
        roles = [overrides.get("taskRoleArn", ""), overrides.get("executionRoleArn", "")]
        roles += _definition_roles(arn, str(params.get("taskDefinition") or ""))
    elif service == "codebuild" and action in ("CreateProject", "UpdateProject"):
        roles, to = [params.get("serviceRole", "")], "codebuild.amazonaws.com"
    for role in roles:
        if role:
            yield Check("iam:PassRole", unquote(str(role)), {"iam:passedtoservice": [to]})


def _definition_roles(arn: _Arns, definition: str) -> list[str]:
    from moto.ecs.models import ecs_backends

    try:
        found = ecs_backends[arn.account][arn.region].describe_task_definition(definition)
    except Exception:
        return []  # moto answers that it is missing
    return [getattr(found, "task_role_arn", None) or "", getattr(found, "execution_role_arn", None) or ""]
