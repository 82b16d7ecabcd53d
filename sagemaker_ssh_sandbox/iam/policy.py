"""A small IAM policy evaluator: what the sandbox uses to enforce the policies the CDK stacks
generate (:mod:`sagemaker_ssh_helper.cdk.policies`) on the calls it serves.

It covers what identity policies written for SSH Helper use, with IAM's semantics:

* ``Effect`` Allow/Deny; an explicit Deny wins, no matching Allow is an implicit deny;
* ``Action``/``NotAction`` (case-insensitive, ``*`` and ``?`` wildcards), ``Resource``/
  ``NotResource`` (case-sensitive wildcards), policy variables such as ``${aws:userid}``;
* condition operators ``String[Not]Equals[IgnoreCase]``, ``String[Not]Like``, ``Arn[Not]Like``,
  ``Arn[Not]Equals``, ``Bool``, ``Null``, ``Numeric*``, each with ``...IfExists``, and the set
  qualifiers ``ForAllValues:`` / ``ForAnyValue:``; keys are case-insensitive, values of one key
  are OR-ed, keys and operators of one block are AND-ed.

A request is ``Request(action, resource, context)`` where ``context`` maps condition keys
(``aws:userid``, ``aws:RequestTag/K``, ``aws:TagKeys``, ``ssm:resourceTag/K`` ...) to a string or
a list of strings.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Union

ALLOW = "Allow"
EXPLICIT_DENY = "ExplicitDeny"
IMPLICIT_DENY = "ImplicitDeny"

Value = Union[str, Sequence[str]]
_VARIABLE = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class Request:
    action: str          # service:Operation
    resource: str        # an ARN, or "*" for actions without a resource type
    context: Mapping[str, Value] = field(default_factory=dict)

    def value(self, key: str) -> list[str] | None:
        """The context values of ``key`` (case-insensitive), None when absent."""
        wanted = key.lower()
        for name, value in self.context.items():
            if name.lower() == wanted:
                return [value] if isinstance(value, str) else list(value)
        return None


@lru_cache(maxsize=512)
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text)
    return re.compile("".join(parts), re.S | (re.I if ignore_case else 0))


def wildcard_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return _pattern(pattern, ignore_case).fullmatch(value) is not None


def substitute(text: str, request: Request) -> str | None:
    """``text`` with its ``${key}`` variables replaced; None if one has no value (then the
    element matches nothing, as in IAM). ``${*}``, ``${?}`` and ``${$}`` are literal."""
    missing = False

    def replace(m: re.Match[str]) -> str:
        nonlocal missing
        key = m.group(1)
        if key in ("*", "?", "$"):
            return key
        values = request.value(key)
        if not values:
            missing = True
            return ""
        return values[0]

    result = _VARIABLE.sub(replace, text)
    return None if missing else result


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _matches_any(patterns: Iterable[str], value: str, request: Request,
                 ignore_case: bool) -> bool:
    for pattern in patterns:
        resolved = substitute(str(pattern), request)
        if resolved is not None and wildcard_match(resolved, value, ignore_case):
            return True
    return False


# -- conditions ------------------------------------------------------------------------------
def _compare(base: str, wanted: str, actual: str) -> bool:
    if base in ("StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals"):
        return actual == wanted if base.startswith("String") else wildcard_match(wanted, actual)
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return actual.lower() == wanted.lower()
    if base in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike"):
        return wildcard_match(wanted, actual)
    if base == "Bool":
        return actual.lower() == wanted.lower()
    if base.startswith("Numeric"):
        try:
            a, w = float(actual), float(wanted)
        except ValueError:
            return False
        return {"NumericEquals": a == w, "NumericNotEquals": a == w, "NumericLessThan": a < w,
                "NumericLessThanEquals": a <= w, "NumericGreaterThan": a > w,
                "NumericGreaterThanEquals": a >= w}[base]
    raise ValueError(f"condition operator {base!r} is not supported by the sandbox")


def _one_value(base: str, wanted: list[str], actual: str) -> bool:
    """Does one context value satisfy the operator against the policy's values (OR-ed)?
    A negated operator (StringNotEquals ...) holds when no value matches."""
    hit = any(_compare(base, w, actual) for w in wanted)
    return not hit if "Not" in base else hit


def condition_holds(operator: str, key: str, raw_values: Any, request: Request) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[:-len("IfExists")]
    actual = request.value(key)
    wanted_raw = [str(v).lower() if isinstance(v, bool) else str(v)
                  for v in _listed(raw_values)]
    if base == "Null":
        is_null = not actual
        return any((w.lower() == "true") == is_null for w in wanted_raw)
    wanted = [w for w in (substitute(v, request) for v in wanted_raw) if w is not None]
    if qualifier == "ForAllValues":
        return all(_one_value(base, wanted, a) for a in (actual or []))
    if qualifier == "ForAnyValue":
        return any(_one_value(base, wanted, a) for a in (actual or []))
    if qualifier:
        raise ValueError(f"condition qualifier {qualifier!r} is not supported by the sandbox")
    if actual is None:
        return if_exists
    if len(actual) != 1:  # a multivalued key needs a set qualifier
        return False
    return _one_value(base, wanted, actual[0])


def conditions_hold(block: Mapping[str, Any], request: Request) -> bool:
    return all(condition_holds(operator, key, values, request)
               for operator, keys in block.items() for key, values in keys.items())


# -- statements and policies -----------------------------------------------------------------
def _admits(statement: Mapping[str, Any], element: str, value: str, request: Request,
            ignore_case: bool) -> bool | None:
    """Whether the statement's ``element`` (Action, Resource) or ``Not<element>`` covers
    ``value``; None where it has neither."""
    if element in statement:
        return _matches_any(_listed(statement[element]), value, request, ignore_case)
    if f"Not{element}" in statement:
        return not _matches_any(_listed(statement[f"Not{element}"]), value, request,
                                ignore_case)
    return None


def statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    if not _admits(statement, "Action", request.action, request, True):  # None: no action
        return False
    if _admits(statement, "Resource", request.resource, request, False) is False:
        return False
    return conditions_hold(statement.get("Condition") or {}, request)


def _statements(policy: str | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    doc = json.loads(policy) if isinstance(policy, str) else policy
    return _listed(doc.get("Statement") or [])


def evaluate(policies: Sequence[str | Mapping[str, Any]], request: Request) -> str:
    """ALLOW, EXPLICIT_DENY or IMPLICIT_DENY for ``request`` under identity ``policies``."""
    allowed = False
    for policy in policies:
        for statement in _statements(policy):
            if not statement_applies(statement, request):
                continue
            if statement.get("Effect") == "Deny":
                return EXPLICIT_DENY
            if statement.get("Effect") == "Allow":
                allowed = True
    return ALLOW if allowed else IMPLICIT_DENY


def tag_context(prefix: str, tags: Mapping[str, str]) -> dict[str, Value]:
    """``{prefix + key: value}`` for condition keys such as ``ssm:resourceTag/``."""
    return {f"{prefix}{key}": value for key, value in tags.items()}
