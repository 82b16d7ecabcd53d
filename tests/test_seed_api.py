"""Every public name of SageMaker SSH Helper v2.3 (the seed) imports from the same module and
accepts the same calls here.

``seed_api.txt`` lists the seed's public API, one name per line, as
``module.Class[bases]``, ``module.Class.method(params) @decorator`` or ``module.function(params)``.
For each line this test imports the module, finds the name and compares signatures: the seed's
parameters must come first, with the same names, kinds and defaults; extra parameters must be
optional. A required seed parameter may have a default here (every seed call still works).

A changed default is allowed only where ``DOCUMENTED_DEFAULTS`` says so (and the docs explain
why). ``python tests/test_seed_api.py`` prints the compatibility figure.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

TABLE = Path(__file__).with_name("seed_api.txt")
_LINE = re.compile(r"^(?P<path>[\w.]+)(?:\[(?P<bases>[\w., ]*)\]|\((?P<params>.*)\))"
                   r"(?:\s+@(?P<decorator>\w+))?$")
_EMPTY = inspect.Parameter.empty

# Seed defaults deliberately changed here (see README "Compatibility with SSH Helper v2"):
# holding an endpoint's model loading for 600 s by default makes deploy() time out.
DOCUMENTED_DEFAULTS: dict[tuple[str, str], Any] = {
    ("sagemaker_ssh_helper.wrapper.SSHModelWrapper.create", "connection_wait_time_seconds"): 0,
    ("sagemaker_ssh_helper.wrapper.SSHMultiModelWrapper.create",
     "connection_wait_time_seconds"): 0,
}


@dataclass(frozen=True)
class Entry:
    path: str
    module: str
    owner: str | None        # class name for methods and classes
    name: str
    params: list[inspect.Parameter] | None  # None for a class line
    bases: tuple[str, ...] = ()
    decorator: str | None = None

    @property
    def is_class(self) -> bool:
        return self.params is None


def _parameters(text: str) -> list[inspect.Parameter]:
    """``self, a, b=1, t=timedelta(minutes=15), **kwargs`` -> inspect.Parameter list."""
    fn = ast.parse(f"def f({text}): pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    args = fn.args
    result = []
    positional = args.posonlyargs + args.args
    defaults = [_EMPTY] * (len(positional) - len(args.defaults)) + [
        eval(compile(ast.Expression(d), "<default>", "eval"), {"timedelta": timedelta})
        for d in args.defaults]
    for arg, default in zip(positional, defaults):
        result.append(inspect.Parameter(arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=default))
    if args.vararg:
        result.append(inspect.Parameter(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    if args.kwarg:
        result.append(inspect.Parameter(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return result


def parse(text: str) -> list[Entry]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _LINE.match(line)
        assert m, f"unparsable line: {line}"
        parts = m["path"].split(".")
        upper = [i for i, p in enumerate(parts) if p[:1].isupper()]
        if upper:
            module, owner = ".".join(parts[:upper[0]]), parts[upper[0]]
            name = parts[upper[0] + 1] if len(parts) > upper[0] + 1 else owner
        else:
            module, owner, name = ".".join(parts[:-1]), None, parts[-1]
        if m["bases"] is not None:
            bases = tuple(b.strip() for b in m["bases"].split(",") if b.strip())
            entries.append(Entry(m["path"], module, owner, name, None, bases))
        else:
            entries.append(Entry(m["path"], module, owner, name, _parameters(m["params"]),
                                 decorator=m["decorator"]))
    return entries


ENTRIES = parse(TABLE.read_text())


def _same_default(expected: Any, actual: Any) -> bool:
    if expected is _EMPTY:
        return True  # a required seed parameter may be optional here
    if actual is _EMPTY:
        return False
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    try:
        return bool(expected == actual)
    except Exception:
        return False


def compare(entry: Entry, params: list[inspect.Parameter]) -> list[str]:
    """Problems of ``params`` (ours, without self/cls) against the seed's."""
    seed = [p for p in entry.params or [] if p.name not in ("self", "cls")]
    problems = []
    ours = list(params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in ours)
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in ours)
    positional = [p for p in ours if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, sp in enumerate(seed):
        if sp.kind is sp.VAR_KEYWORD:
            if not var_kw:
                problems.append(f"needs **{sp.name}")
            continue
        if sp.kind is sp.VAR_POSITIONAL:
            if not var_pos:
                problems.append(f"needs *{sp.name}")
            continue
        if i >= len(positional) or positional[i].name != sp.name:
            got = positional[i].name if i < len(positional) else "nothing"
            problems.append(f"parameter {i + 1} must be {sp.name!r}, got {got}")
            continue
        op = positional[i]
        if op.kind is op.POSITIONAL_ONLY:
            problems.append(f"{sp.name} is positional-only")
        if not _same_default(sp.default, op.default):
            documented = DOCUMENTED_DEFAULTS.get((entry.path, sp.name), _EMPTY)
            if documented is _EMPTY or not _same_default(documented, op.default):
                problems.append(f"{sp.name} defaults to {op.default!r}, the seed to "
                                f"{sp.default!r}")
    n_seed_positional = len([p for p in seed if p.kind is p.POSITIONAL_OR_KEYWORD])
    for extra in positional[n_seed_positional:] + [
            p for p in ours if p.kind is p.KEYWORD_ONLY]:
        if extra.default is _EMPTY:
            problems.append(f"extra parameter {extra.name!r} is required")
    return problems


def _callable_params(obj: Any, static: bool) -> list[inspect.Parameter]:
    params = list(inspect.signature(obj).parameters.values())
    return params if static else params[1:]


def _derives(cls: type, base: str) -> bool:
    """``base`` is a class name (``Stack``) or a dotted path (``sagemaker.processing.Processor``)
    of one of ``cls``'s bases."""
    if "." not in base:
        return base in {c.__name__ for c in cls.__mro__}
    module, _, name = base.rpartition(".")
    target = getattr(importlib.import_module(module), name, None)
    return inspect.isclass(target) and issubclass(cls, target)


def check(entry: Entry) -> list[str]:
    """What is incompatible about ``entry`` here (empty when it is compatible)."""
    try:
        module = importlib.import_module(entry.module)
    except Exception as e:
        return [f"module {entry.module} does not import: {type(e).__name__}: {e}"]
    if entry.owner is None:
        fn = getattr(module, entry.name, None)
        if not callable(fn):
            return [f"{entry.module}.{entry.name} is missing"]
        return compare(entry, list(inspect.signature(fn).parameters.values()))
    cls = getattr(module, entry.owner, None)
    if not inspect.isclass(cls):
        return [f"class {entry.module}.{entry.owner} is missing"]
    if entry.is_class:
        return [f"{entry.owner} does not derive from {b}" for b in entry.bases
                if b != "ABC" and not _derives(cls, b)]
    try:
        raw = inspect.getattr_static(cls, entry.name)
    except AttributeError:
        return [f"{entry.owner}.{entry.name} is missing"]
    seed_kind = entry.decorator if entry.decorator in ("staticmethod", "classmethod") else None
    if isinstance(raw, (staticmethod, classmethod)):
        ours = _callable_params(raw.__func__, isinstance(raw, staticmethod))
        if seed_kind is None and isinstance(raw, staticmethod):
            return [f"{entry.name} is a staticmethod here, an instance method in the seed"]
    elif inspect.isfunction(raw):
        if seed_kind is not None:
            return [f"{entry.name} must be callable on the class ({seed_kind})"]
        ours = _callable_params(raw, False)
    else:
        return [f"{entry.owner}.{entry.name} is a {type(raw).__name__}, not a method"]
    return compare(entry, ours)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.path for e in ENTRIES])
def test_seed_name_is_compatible(entry: Entry) -> None:
    assert not check(entry), check(entry)


def test_the_table_is_the_whole_seed_api() -> None:
    assert len(ENTRIES) == 252
    assert len({e.path for e in ENTRIES}) == 252


def figure() -> tuple[int, int, dict[str, list[str]]]:
    failures = {e.path: problems for e in ENTRIES if (problems := check(e))}
    return len(ENTRIES) - len(failures), len(ENTRIES), failures


if __name__ == "__main__":
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    ok, total, failed = figure()
    for path, problems in failed.items():
        print(f"{path}: {'; '.join(problems)}")
    print(f"{ok}/{total} seed names importable with a compatible signature")
    sys.exit(0 if ok == total else 1)
