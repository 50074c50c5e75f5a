"""EMULATION: IAM's policy evaluation, for the emulator's enforcement (access.py).

moto's own evaluator treats a failed condition as an explicit Deny, evaluates only ``StringEquals``
(and only on ``sts:ExternalId``), ignores permissions boundaries and fails on a ``Service`` principal in
a trust policy. This one follows IAM's rules for what cloudburst's documents use:

* ``Action``/``NotAction``, ``Resource``/``NotResource`` with ``*`` and ``?`` (actions case-insensitive);
* an explicit ``Deny`` wins; otherwise some ``Allow`` must apply; a statement whose condition fails
  does not apply (it denies nothing);
* conditions ``String[Not]Equals``, ``String[Not]Like``, ``Arn[Not]Equals``, ``Arn[Not]Like``, ``Bool``,
  ``Null``, each also ``...IfExists``; a key missing from the request fails a positive operator and
  passes a negated one, as in IAM; with ``ForAnyValue:``/``ForAllValues:`` for multi-valued keys
  (``kms:ResourceAliases``). Any other operator (numeric, date, IP) fails the statement: the emulator
  denies rather than guess;
* ``Principal`` in trust policies: ``*``, ``{"AWS": ...}`` (an account, its ``root``, a user, a role:
  a role's sessions are that role) and ``{"Service": ...}``.

What a request brings to the conditions is listed in access.py (``aws:PrincipalArn``, ``s3:prefix``,
``ecs:cluster``, ``iam:PermissionsBoundary``, ``iam:PassedToService``; ``aws:SourceAccount`` and
``aws:SourceArn`` when the agent takes a role as ECS or CodeBuild).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Context", "allows", "denies", "principal_matches", "trusts"]

#: condition key (lower case) → the values the request carries for it
Context = Mapping[str, Sequence[str]]


def _equal(want: str, got: str) -> bool:
    return want == got


def _like(pattern: str, value: str) -> bool:
    return _matches([pattern], value)


def _same_bool(want: str, got: str) -> bool:
    return want.lower() == got.lower()


_SIMPLE: dict[str, Callable[[str, str], bool]] = {
    "stringequals": _equal,
    "stringlike": _like,
    "arnequals": _equal,
    "arnlike": _like,
    "bool": _same_bool,
}


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _matches(patterns: Iterable[str], value: str, *, fold: bool = False) -> bool:
    for pattern in patterns:
        if fold:
            pattern, value = pattern.lower(), value.lower()
        # fnmatch's [] classes are not IAM's: escape them, keep * and ?
        regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(regex, value, re.DOTALL):
            return True
    return False


def _condition_holds(operator: str, key: str, wanted: Any, context: Context) -> bool:
    name = operator.lower()
    if name.startswith("forallvalues:"):  # every value the request brings matches (none: holds)
        values = context.get(key.lower()) or []
        return all(_condition_holds(name.split(":", 1)[1], key, wanted, {key.lower(): [v]}) for v in values)
    name = name.removeprefix("foranyvalue:")  # some value matches: how a single-valued key is tested too
    if_exists = name.endswith("ifexists")
    name = name.removesuffix("ifexists")
    present = context.get(key.lower())
    if name == "null":
        return (str(wanted).lower() == "true") == (not present)
    negated = "not" in name
    test = _SIMPLE.get(name.replace("not", ""))
    if test is None:
        return False  # an operator this emulator does not know: the statement does not apply
    if not present:
        return if_exists or negated
    hit = any(test(w, got) for w in _listed(wanted) for got in present)
    return not hit if negated else hit


def _conditions_hold(statement: Mapping[str, Any], context: Context) -> bool:
    for operator, pairs in (statement.get("Condition") or {}).items():
        for key, wanted in pairs.items():
            if not _condition_holds(operator, key, wanted, context):
                return False
    return True


def _statement_applies(statement: Mapping[str, Any], action: str, resource: str, context: Context) -> bool:
    if "NotAction" in statement:
        if _matches(_listed(statement["NotAction"]), action, fold=True):
            return False
    elif not _matches(_listed(statement.get("Action")), action, fold=True):
        return False
    if "NotResource" in statement:
        if _matches(_listed(statement["NotResource"]), resource):
            return False
    elif "Resource" in statement and not _matches(_listed(statement["Resource"]), resource):
        return False
    return _conditions_hold(statement, context)


def _statements(document: str | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    loaded = json.loads(document) if isinstance(document, str) else document
    found = loaded.get("Statement", [])
    return [found] if isinstance(found, dict) else list(found)


def denies(documents: Iterable[str | Mapping[str, Any]], action: str, resource: str, context: Context) -> bool:
    """Does an explicit Deny in any of ``documents`` apply to this request?"""
    return any(
        s.get("Effect") == "Deny" and _statement_applies(s, action, resource, context)
        for d in documents
        for s in _statements(d)
    )


def allows(documents: Iterable[str | Mapping[str, Any]], action: str, resource: str, context: Context) -> bool:
    """Does some Allow in ``documents`` apply to this request (explicit Denies aside: see :func:`denies`)?"""
    return any(
        s.get("Effect") == "Allow" and _statement_applies(s, action, resource, context)
        for d in documents
        for s in _statements(d)
    )


def principal_matches(principal: Any, caller: str, *, service: str = "") -> bool:
    """Does a trust statement's ``Principal`` name ``caller`` (an IAM ARN; a role's session counts as its
    role), or ``service`` when an AWS service takes the role?"""
    if principal == "*":
        return not service
    if not isinstance(principal, Mapping):
        return False
    if service:
        return service in _listed(principal.get("Service"))
    account = caller.split(":")[4] if caller.count(":") >= 5 else ""
    for named in _listed(principal.get("AWS")):
        if named == "*" or named == caller or named in (account, f"arn:aws:iam::{account}:root"):
            return True
    return False


def trusts(document: str | Mapping[str, Any], caller: str, context: Context, *, service: str = "") -> bool:
    """Does a role's trust policy let ``caller`` (or AWS ``service``) take it (sts:AssumeRole)?"""
    allowed = False
    for statement in _statements(document):
        if not _matches(_listed(statement.get("Action")), "sts:AssumeRole", fold=True):
            continue
        if not principal_matches(statement.get("Principal"), caller, service=service):
            continue
        if not _conditions_hold(statement, context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed
