"""`json.dumps(document, indent=2)`, the same text, about 2.5x faster.

Every `--json` is printed indented, and the standard library indents only in its pure-Python encoder (its C
encoder ignores `indent`: CPython Lib/json/encoder.py, JSONEncoder.iterencode, uses c_make_encoder only when
indent is None). A fleet's document is large (about 15 KB per host: `gpupass fleet gpus --json` of 1,000 hosts is
15 MB), and that encoder then took about as long as reading one host (0.5 s per 1,000 hosts here;
tests/bench/bench_fleet.py). This writer does the same with fewer calls per value and the C string escaper; for a
value it does not know it hands the whole document to json.dumps, which gives the same text or the same error.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _quoted  # the escaper json.dumps uses (ensure_ascii=True)
from typing import Any

_INFINITY = float("inf")


class _Unusual(Exception):
    """A value json.dumps treats in a way this writer does not copy (a key that is not a string, `default`)."""


def dumps(document: Any) -> str:
    """Exactly json.dumps(document, indent=2)."""
    parts: list[str] = []
    try:
        _write(document, "", parts)
    except (_Unusual, RecursionError):  # RecursionError: a cycle, for which json raises its own ValueError
        return json.dumps(document, indent=2)
    return "".join(parts)


def _write(value: Any, margin: str, parts: list[str]) -> None:
    append = parts.append
    if isinstance(value, str):
        append(_quoted(value))
    elif value is None:
        append("null")
    elif value is True:
        append("true")
    elif value is False:
        append("false")
    elif isinstance(value, int):
        append(int.__repr__(value))  # as json does: an IntEnum is its number
    elif isinstance(value, float):
        append(_float(value))
    elif isinstance(value, dict):
        if not value:
            append("{}")
            return
        inner = margin + "  "
        separator = "{\n" + inner
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unusual  # json turns numbers, booleans and None into strings, and may skip others
            append(separator + _quoted(key) + ": ")
            _write(item, inner, parts)
            separator = ",\n" + inner
        append("\n" + margin + "}")
    elif isinstance(value, (list, tuple)):
        if not value:
            append("[]")
            return
        inner = margin + "  "
        separator = "[\n" + inner
        for item in value:
            append(separator)
            _write(item, inner, parts)
            separator = ",\n" + inner
        append("\n" + margin + "]")
    else:
        raise _Unusual


def _float(value: float) -> str:
    # json.encoder's floatstr with allow_nan=True
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)
