"""Check that data read from a file has the types the domain's dataclasses declare.

Files (snapshots, the config) are parsed into dataclasses that do not check their own fields, so a snapshot
with `"memory_bytes": "16G"` would be accepted and fail much later, deep inside a rule, as a traceback. The
readers call `first_problem()` right after decoding and report the field by its path instead.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (a bool is not a number; containers are checked item by item)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(matches(item, arm) for item, arm in zip(value, args, strict=True))
    if origin is list:
        return isinstance(value, list) and all(matches(item, args[0]) for item in value) if args else True
    if isinstance(origin, type) and issubclass(origin, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        return not args or all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    return isinstance(value, origin or hint)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def first_problem(obj: Any, path: str = "") -> str | None:
    """The first field of the dataclass tree `obj` whose value does not fit its annotation, as `path: ...`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        hints = _hints(type(obj))
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            where = f"{path}.{field.name}" if path else field.name
            if not matches(value, hints[field.name]):
                return f"{where} is {type(value).__name__}, not {type_name(hints[field.name])}"
            problem = first_problem(value, where)
            if problem:
                return problem
    elif isinstance(obj, (tuple, list)):
        for index, item in enumerate(obj):
            problem = first_problem(item, f"{path}[{index}]")
            if problem:
                return problem
    elif isinstance(obj, Mapping):
        for key, item in obj.items():
            problem = first_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
    return None


def first_out_of_range(obj: Any, limits: Mapping[str, int], path: str = "") -> str | None:
    """The first whole-number field of the dataclass tree `obj` below 0 or above its limit in `limits` (by field
    name), as `path is N, ...`. The facts' numbers are sizes, counts and PCI ids, none of them negative; values in
    a mapping (a platform's settings) are the platform's own and not looked at."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            where = f"{path}.{field.name}" if path else field.name
            if isinstance(value, int) and not isinstance(value, bool):
                limit = limits.get(field.name)
                if value < 0:
                    return f"{where} is {value}, which is below 0"
                if limit is not None and value > limit:
                    return f"{where} is {value}, above {limit:#x}"
            else:
                problem = first_out_of_range(value, limits, where)
                if problem:
                    return problem
    elif isinstance(obj, (tuple, list)):
        for index, item in enumerate(obj):
            problem = first_out_of_range(item, limits, f"{path}[{index}]")
            if problem:
                return problem
    return None


def type_name(hint: Any) -> str:
    """An annotation as a person reads it: `bool`, `str | None`, `Mapping[str, str]`."""
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")
