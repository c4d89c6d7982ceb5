"""docs/faults.md's matrix is complete and true to the tests: every kind of write step each backend plans (each payload
class of backends/<platform>/steps.py) and its undo has a row, and each of the four faults of issue 10 -- the client
killed, the endpoint killed, the endpoint frozen, the reply dropped -- either names tests that exist and inject that
fault, or says honestly why it is not injected (`not injected: ...`) or cannot happen there (`n/a: ...`)."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAULTS_MD = ROOT / "docs" / "faults.md"
HEADING = "## The matrix: every write step x the four faults"
COLUMNS = ["backend", "payload", "write", "client killed", "endpoint killed", "endpoint frozen", "reply dropped"]
BACKENDS = {"KVM": "kvm", "ESXi": "esxi", "Hyper-V": "hyperv"}
# What a test that injects the fault must do in its body (its name and docstring aside): a SIGKILL (of a gpupass
# process, or of the endpoint), a SIGSTOP or a reply withheld, a reply lost or dropped on its way back.
MECHANISMS = {
    "client killed": re.compile(r"SIGKILL|kill_when_held|killed_with|\.kill\(|os\.kill"),
    # (ESXi's simulator keeps its inventory in memory: its kill is modelled as a restart with the host's state kept,
    # tests/support/esxi_faults.py's restarted_when_held)
    "endpoint killed": re.compile(r"SIGKILL|os\.kill|\.kill\w*\(|kill_endpoint|kill_daemon|restarted_when_held"),
    "endpoint frozen": re.compile(r"SIGSTOP|frozen_before|freeze|withhold"),
    "reply dropped": re.compile(r"drop|lost|losing|lose_|discard|withhold"),
}
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
EXPLAINED = re.compile(r"^(not injected|n/a): \S.{19,}")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@functools.cache
def matrix() -> list[dict[str, str]]:
    text = FAULTS_MD.read_text(encoding="utf-8")
    assert HEADING in text, f"docs/faults.md has no section {HEADING!r}"
    lines = text.split(HEADING, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| backend"))
    assert _cells(lines[start]) == COLUMNS
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), line[:120]
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def _payload(cell: str) -> tuple[str, bool]:
    """`DefineDomain` -> ("DefineDomain", False); `DefineDomain` undo -> ("DefineDomain", True)."""
    found = re.fullmatch(r"`(\w+)`( undo)?", cell)
    assert found, f"payload cell {cell!r} is not `Class` or `Class` undo"
    return found.group(1), bool(found.group(2))


def payload_classes(package: str) -> set[str]:
    module = importlib.import_module(f"gpupass.backends.{package}.steps")
    return {name for name, cls in inspect.getmembers(module, inspect.isclass) if cls.__module__ == module.__name__}


@functools.cache
def _module(path: str) -> tuple[str, dict[str, ast.FunctionDef]]:
    """The file's source and its functions by name: the module's own and its classes' methods."""
    source = (ROOT / path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            functions.setdefault(method.name, method)
    return source, functions


def _body(path: str, name: str) -> str | None:
    """The test's body without its name and docstring, with the bodies of the functions and methods of the same file
    it calls (one level: the fault is often put in place by a helper of the same file)."""
    source, functions = _module(path)
    node = functions.get(name)
    if node is None:
        return None
    statements = node.body[1:] if ast.get_docstring(node) else node.body
    parts = [ast.get_source_segment(source, s) or "" for s in statements]
    calls = [n.func for s in statements for n in ast.walk(s) if isinstance(n, ast.Call)]
    called = {f.id if isinstance(f, ast.Name) else f.attr for f in calls if isinstance(f, (ast.Name, ast.Attribute))}
    decorators = " ".join(ast.get_source_segment(source, d) or "" for d in node.decorator_list)
    for helper in sorted(called & set(functions) - {name}):
        parts.append(ast.get_source_segment(source, functions[helper]) or "")
    return decorators + "\n" + "\n".join(parts)


@pytest.mark.parametrize("label", sorted(BACKENDS))
def test_every_payload_and_its_undo_has_a_row(label):
    package = BACKENDS[label]
    rows = {_payload(row["payload"]) for row in matrix() if row["backend"] == label}
    classes = payload_classes(package)
    missing = sorted(f"`{c}`{' undo' if undo else ''}" for c in classes for undo in (False, True) if (c, undo) not in rows)
    assert missing == [], f"docs/faults.md's matrix has no row for these {label} steps: {missing}"
    unknown = sorted(c for c, _ in rows if c not in classes)
    assert unknown == [], f"rows name {label} payloads backends/{package}/steps.py does not define: {unknown}"


def test_every_row_is_of_a_known_backend():
    assert {row["backend"] for row in matrix()} <= set(BACKENDS)


def test_every_fault_cell_names_tests_or_says_why_not():
    vague = [(row["backend"], row["payload"], column, row[column][:60]) for row in matrix() for column in MECHANISMS
             if not REFERENCE.search(row[column]) and not EXPLAINED.match(row[column])]
    assert vague == []


def test_every_named_test_exists_and_injects_its_columns_fault():
    wrong = []
    for row in matrix():
        for column, mechanism in MECHANISMS.items():
            if EXPLAINED.match(row[column]):
                continue  # tests named in its reason (what IS injected instead) are checked for existence only
            for path, name in REFERENCE.findall(row[column]):
                body = _body(path, name) if (ROOT / path).is_file() else None
                if body is None:
                    wrong.append(f"{path}::{name} does not exist")
                elif not mechanism.search(body):
                    wrong.append(f"{path}::{name} ({row['backend']} {row['payload']}, {column}) does not inject it")
    for row in matrix():
        for column in MECHANISMS:
            if EXPLAINED.match(row[column]):
                wrong += [f"{p}::{n} does not exist" for p, n in REFERENCE.findall(row[column])
                          if not (ROOT / p).is_file() or n not in _module(p)[1]]
    assert wrong == []


def test_the_check_catches_a_missing_row_a_missing_test_and_a_wrong_fault():
    assert _payload("`DefineDomain` undo") == ("DefineDomain", True)
    with pytest.raises(AssertionError):
        _payload("DefineDomain")
    assert not EXPLAINED.match("not injected") and not EXPLAINED.match("n/a: too short")
    assert EXPLAINED.match("n/a: a local write has no reply to lose")
    assert _body("tests/unit/test_fault_matrix_complete.py", "test_does_not_exist") is None
    # this very test kills nothing, freezes nothing and drops no reply
    body = _body("tests/unit/test_fault_matrix_complete.py", "test_every_row_is_of_a_known_backend")
    assert body is not None and not any(m.search(body) for m in MECHANISMS.values())
