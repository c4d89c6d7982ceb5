"""Every plugin hook has a section in docs/plugins.md, headed by its exact name and signature (as datasette does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpupass.core import hookspecs
from gpupass.core.cli.plugins_doc import signature

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HEADING = re.compile(r"^#{2,4} +`?(?P<name>gpupass_\w+)(?P<signature>\([^)]*\)(?: -> \S+)?)?`? *$", re.MULTILINE)


def hookspec_names() -> list[str]:
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker))


def documented() -> dict[str, str | None]:
    return {m["name"]: m["signature"] for m in HEADING.finditer(GUIDE.read_text(encoding="utf-8"))}


def test_the_hookspecs_are_found():
    assert "gpupass_register_backends" in hookspec_names()


@pytest.mark.parametrize("name", hookspec_names())
def test_hook_has_a_section_with_its_signature(name):
    sections = documented()
    assert name in sections, f"docs/plugins.md has no heading for the hook {name}"
    expected = signature(getattr(hookspecs, name))
    assert sections[name] == expected, f"the heading of {name} should read {name}{expected}"


def test_no_section_documents_a_hook_that_does_not_exist():
    stale = set(documented()) - set(hookspec_names())
    assert not stale, f"docs/plugins.md documents hooks that core/hookspecs.py does not define: {sorted(stale)}"
