"""Typed steps: each backend's step payloads are its own small frozen dataclasses, and apply/undo pick their
handler by the payload's type (functools.singledispatchmethod), never by the step's `action` label."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# backend package -> its Backend class (module, name); the payloads live in <package>.steps
BACKENDS = {
    "kvm": ("gpupass.backends.kvm.backend", "KvmBackend"),
    "esxi": ("gpupass.backends.esxi.backend", "EsxiBackend"),
    "hyperv": ("gpupass.backends.hyperv.backend", "HypervBackend"),
}


def test_every_in_tree_backend_is_checked_here():
    """A new platform folder under backends/ (with a backend.py) gets its steps.py checked like the others."""
    folders = {p.parent.name for p in (ROOT / "backends").glob("*/backend.py")}
    assert folders == set(BACKENDS)


def payload_classes(platform: str) -> list[type]:
    module = importlib.import_module(f"gpupass.backends.{platform}.steps")
    return [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]


@pytest.mark.parametrize("platform", sorted(BACKENDS))
def test_every_payload_is_a_small_frozen_dataclass(platform):
    classes = payload_classes(platform)
    assert classes, f"backends/{platform}/steps.py defines no payload"
    for cls in classes:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        fields = dataclasses.fields(cls)
        assert fields and all(f.type for f in fields), cls


@pytest.mark.parametrize("platform", sorted(BACKENDS))
def test_every_payload_has_an_apply_and_an_undo_handler(platform):
    module, name = BACKENDS[platform]
    backend = getattr(importlib.import_module(module), name)
    for handlers in ("_apply", "_undo"):
        registry = backend.__dict__[handlers].dispatcher.registry
        for cls in payload_classes(platform):
            assert registry.get(cls) not in (None, registry[object]), f"{name}.{handlers} has no handler for {cls}"


def _compares_action(tree: ast.AST) -> list[int]:
    """Lines that compare some `x.action` with something: dispatching on the label."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr == "action" for o in operands):
                found.append(node.lineno)
        if isinstance(node, ast.Match) and isinstance(node.subject, ast.Attribute) and node.subject.attr == "action":
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("platform", sorted(BACKENDS))
def test_no_backend_dispatches_on_the_action_label(platform):
    offenders = []
    for path in sorted((ROOT / "backends" / platform).rglob("*.py")):
        if "lab" in path.relative_to(ROOT / "backends" / platform).parts:
            continue
        lines = _compares_action(ast.parse(path.read_text(), str(path)))
        offenders += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert offenders == []


def test_the_check_catches_a_dispatch_on_the_label():
    assert _compares_action(ast.parse("if step.action == 'kvm.hotplug':\n    pass\n")) == [1]
    assert _compares_action(ast.parse("ok = step.action in ('a', 'b')\n")) == [1]
    assert _compares_action(ast.parse("match step.action:\n    case 'a':\n        pass\n")) == [1]
    assert _compares_action(ast.parse("isinstance(step.payload, int)\n")) == []
