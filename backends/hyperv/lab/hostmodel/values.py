"""Runtime values of the PowerShell subset: objects, hashtables, enums, error records."""
from __future__ import annotations

import json
from typing import Any, Iterable


class PSEnum:
    """A .NET enum value: compares by name (case-insensitive) or number, JSON as its number."""

    def __init__(self, typename: str, name: str, value: int):
        self.typename, self.name, self.value = typename, name, value

    def __repr__(self) -> str:
        return f"PSEnum({self.typename}.{self.name}={self.value})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PSEnum):
            return self.value == other.value and self.typename == other.typename
        if isinstance(other, str):
            return other.lower() == self.name.lower()
        if isinstance(other, int) and not isinstance(other, bool):
            return other == self.value
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.typename, self.value))


class PSObject:
    """PSCustomObject / .NET object: ordered, case-insensitive properties."""

    def __init__(self, props: dict[str, Any] | Iterable[tuple[str, Any]] = (), typename: str = "System.Management.Automation.PSCustomObject"):
        self._props: dict[str, tuple[str, Any]] = {}
        self.typename = typename
        items = props.items() if isinstance(props, dict) else props
        for k, v in items:
            self.set(k, v)

    def get(self, name: str, default: Any = None) -> Any:
        hit = self._props.get(name.lower())
        return hit[1] if hit else default

    def has(self, name: str) -> bool:
        return name.lower() in self._props

    def set(self, name: str, value: Any) -> None:
        key = self._props.get(name.lower(), (name, None))[0]
        self._props[name.lower()] = (key, value)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._props.values())

    def __repr__(self) -> str:
        return f"PSObject({self.typename}, {dict(self.items())!r})"


class Hashtable:
    """@{} / [ordered]@{}: case-insensitive keys, insertion order kept."""

    def __init__(self, items: Iterable[tuple[Any, Any]] = (), ordered: bool = False):
        self._d: dict[Any, tuple[Any, Any]] = {}
        self.ordered = ordered
        for k, v in items:
            self.set(k, v)

    @staticmethod
    def _norm(k: Any) -> Any:
        return k.lower() if isinstance(k, str) else k

    def get(self, k: Any, default: Any = None) -> Any:
        hit = self._d.get(self._norm(k))
        return hit[1] if hit else default

    def has(self, k: Any) -> bool:
        return self._norm(k) in self._d

    def set(self, k: Any, v: Any) -> None:
        n = self._norm(k)
        key = self._d.get(n, (k, None))[0]
        self._d[n] = (key, v)

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Hashtable({dict(self.items())!r})"


class ErrorRecord:
    """What $_ holds in a catch block and what is printed on the error stream."""

    def __init__(self, message: str, fqid: str, category: str = "NotSpecified",
                 exception: str = "System.Management.Automation.RuntimeException",
                 target: str = "", command: str = "", line: int = 0, col: int = 0,
                 line_text: str = "", extent: int = 1, target_obj: Any = None):
        self.message, self.fqid, self.category = message, fqid, category
        self.exception, self.target, self.command = exception, target, command
        self.line, self.col, self.line_text, self.extent = line, col, line_text, extent
        self.target_obj = target_obj

    def prop(self, name: str) -> Any:
        n = name.lower()
        if n == "exception":
            return PSObject({"Message": self.message, "GetType": self.exception}, typename=self.exception)
        if n == "fullyqualifiederrorid":
            return self.fqid
        if n == "categoryinfo":
            return PSObject({"Category": self.category, "Reason": self.exception.rsplit(".", 1)[-1],
                             "TargetName": self.target, "Activity": self.command})
        if n == "targetobject":
            return self.target_obj if self.target_obj is not None else (self.target or None)
        if n == "errordetails":
            return None
        return None

    def format(self) -> str:
        """PowerShell 5.1's default (NormalView) rendering of an error record."""
        lines = []
        head = f"{self.command} : {self.message}" if self.command else self.message
        lines.extend(head.split("\n"))
        if self.line:
            lines.append(f"At line:{self.line} char:{self.col}")
            lines.append("+ " + self.line_text)
            lines.append("+ " + " " * (self.col - 1) + "~" * max(1, self.extent))
        short = self.exception.rsplit(".", 1)[-1]
        target = f"{self.target}:String" if self.target else ":"
        lines.append(f"    + CategoryInfo          : {self.category}: ({target}) [{self.command}], {short}")
        lines.append(f"    + FullyQualifiedErrorId : {self.fqid}")
        lines.append(" ")
        return "\n".join(lines)


def to_json_value(v: Any, depth: int, max_depth: int) -> Any:
    """ConvertTo-Json's view of a value (PowerShell 5.1 semantics: enums as numbers)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, PSEnum):
        return v.value
    if isinstance(v, (bytes, bytearray)):
        v = list(v)
    if isinstance(v, list):
        if depth > max_depth:
            return " ".join(to_string(x) for x in v)
        return [to_json_value(x, depth + 1, max_depth) for x in v]
    if isinstance(v, Hashtable):
        if depth > max_depth:
            return "System.Collections.Hashtable"
        return {str(k): to_json_value(x, depth + 1, max_depth) for k, x in v.items()}
    if isinstance(v, PSObject):
        if depth > max_depth:
            return to_string(v)
        return {k: to_json_value(x, depth + 1, max_depth) for k, x in v.items()}
    if isinstance(v, ErrorRecord):
        return v.message
    return to_string(v)


def ps_json_dumps(v: Any, compress: bool) -> str:
    if compress:
        s = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    else:
        s = json.dumps(v, ensure_ascii=False, indent=4)
    # Windows PowerShell 5.1 (JavaScriptSerializer) escapes these
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")


def from_json_value(v: Any) -> Any:
    if isinstance(v, dict):
        return PSObject((k, from_json_value(x)) for k, x in v.items())
    if isinstance(v, list):
        return [from_json_value(x) for x in v]
    return v


def to_string(v: Any, _depth: int = 0) -> str:
    if _depth > 8:
        return v.typename if isinstance(v, PSObject) else type(v).__name__
    if v is None:
        return ""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return repr(v) if v != int(v) else str(int(v))
    if isinstance(v, PSEnum):
        return v.name
    if isinstance(v, list):
        return " ".join(to_string(x, _depth + 1) for x in v)
    if isinstance(v, Hashtable):
        return "System.Collections.Hashtable"
    if isinstance(v, PSObject):
        if v.typename != "System.Management.Automation.PSCustomObject":
            return v.typename
        return "@{" + "; ".join(f"{k}={to_string(x, _depth + 1)}" for k, x in v.items()) + "}"
    if isinstance(v, ErrorRecord):
        return v.message
    if isinstance(v, (bytes, bytearray)):
        return " ".join(str(b) for b in v)
    return str(v)


def truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, str):
        return v != ""
    if isinstance(v, PSEnum):
        return v.value != 0
    if isinstance(v, list):
        if not v:
            return False
        if len(v) == 1:
            return truthy(v[0])
        return True
    return True
