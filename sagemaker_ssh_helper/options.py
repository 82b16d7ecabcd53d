"""Our long options where argparse cannot take them: mixed with ssh's options after the target
(``sm-ssh connect``, ``sm-local-ssh-<kind> connect``) or before the target of the sm-local-*
commands. Each is a small typed spec (:class:`Option`); ``connect.split_connect_args`` and
``sm_local``'s leading options parse with the same specs, so ``--x v`` and ``--x=v``, the
"needs a value" and "needs a number" messages are the same everywhere.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Callable, Literal, Union

from sagemaker_ssh_helper.errors import UsageError

Kind = Literal["flag", "int", "float", "str"]
Value = Union[bool, int, float, str, None]


@dataclass(frozen=True)
class Option:
    """One of our options: its names (the first is the key of its value), what its value is,
    its default, an optional validator (text -> value, raising a one-line UsageError) that
    replaces the kind's own conversion, and its help."""

    names: tuple[str, ...]
    kind: Kind
    default: Value = None
    validator: Callable[[str], Value] | None = None
    help: str = ""

    @property
    def name(self) -> str:
        return self.names[0]

    def convert(self, key: str, text: str) -> Value:
        """The value of ``key`` (one of the names) given as ``text``."""
        if self.validator is not None:
            return self.validator(text)
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise UsageError(f"{key} needs a number, got {text!r}") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise UsageError(f"{key} needs a number, got {text!r}") from None
        return text


class Values:
    """What was given for a set of options (their defaults otherwise), by the option's name."""

    def __init__(self, specs: Iterable[Option] = ()) -> None:
        self._values: dict[str, Value] = {s.name: s.default for s in specs}
        self.given: list[str] = []  # names of the options given, in order

    def set(self, spec: Option, value: Value) -> None:
        self._values[spec.name] = value
        self.given.append(spec.name)

    def __contains__(self, name: str) -> bool:
        return name in self.given

    def get(self, name: str) -> Value:
        return self._values.get(name)

    def flag(self, name: str) -> bool:
        return bool(self._values.get(name))

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name)
        return default if value is None else str(value)

    def number(self, name: str) -> int:
        value = self._values.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} is not an int option")
        return value


def lookup(specs: Sequence[Option], key: str) -> Option | None:
    """The spec named ``key`` (any of its names)."""
    return next((s for s in specs if key in s.names), None)


def take(spec: Option, item: str, items: list[str]) -> Value:
    """The value of ``item`` (``--x``, ``--x v`` or ``--x=v``), consuming ``v`` from ``items``
    when it is the next argument; a flag is True."""
    key, eq, text = item.partition("=")
    if spec.kind == "flag":
        return True
    if not eq:
        if not items:
            raise UsageError(f"{key} needs a value")
        text = items.pop(0)
    return spec.convert(key, text)


def leading(argv: Sequence[str], specs: Sequence[Option]) -> tuple[Values, list[str]]:
    """Options before the target: (their values, the rest starting at the target)."""
    values = Values(specs)
    items = list(argv)
    while items and items[0].startswith("-"):
        item = items.pop(0)
        key, eq, _ = item.partition("=")
        spec = lookup(specs, key)
        if spec is None or (spec.kind == "flag" and eq):
            raise UsageError(f"unknown option {item!r} before the target (ssh options go after "
                             "it)")
        values.set(spec, take(spec, item, items))
    if not items:
        raise UsageError("missing the target: a managed instance ID (mi-...) or "
                         "<name>.<kind>.sagemaker")
    return values, items


def names(specs: Iterable[Option]) -> tuple[str, ...]:
    return tuple(n for s in specs for n in s.names)
