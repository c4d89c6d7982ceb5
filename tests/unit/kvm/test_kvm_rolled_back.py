"""What the KVM backend's errors say about the host: every raise site says `rolled_back` itself (the core believes
True without reading the host, core/service.py `_observed`), and a call failing after one of a step's own writes went
through is made "not known", so that the service reads the host again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gpupass.backends.kvm.backend import _after_its_write
from gpupass.core.errors import Conflict, OperationFailed

BACKEND = Path(__file__).resolve().parents[3] / "backends" / "kvm"
# The error classes that carry `rolled_back`, as the KVM backend names them (its own subclasses included).
CARRIERS = {"OperationFailed", "Conflict", "Interrupted", "_SecretsDenied", "_UnplugPending"}


def silent_sites(source: str) -> list[int]:
    """The lines of calls to an error class that carries `rolled_back` without saying it."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CARRIERS
            and not any(k.arg == "rolled_back" for k in node.keywords)]


def test_every_kvm_raise_site_says_whether_its_step_changed_the_host():
    silent = {str(path.relative_to(BACKEND)): lines for path in sorted(BACKEND.rglob("*.py"))
              if (lines := silent_sites(path.read_text(encoding="utf-8")))}
    assert silent == {}


def test_the_check_finds_a_raise_site_that_says_nothing():
    assert silent_sites("raise OperationFailed('x', remedy='y')\nraise Conflict('z', rolled_back=True)") == [1]


@pytest.mark.parametrize("error,after", [
    (OperationFailed("refused", rolled_back=True), None),  # a call refused after the step wrote: not known
    (OperationFailed("left", rolled_back=False), False),  # an error that says its change is left keeps its word
    (Conflict("another run won; this run's change was undone", rolled_back=True), True),  # verified by the run
])
def test_a_failure_after_a_steps_own_write_is_not_known_unless_it_says_more(error, after):
    with pytest.raises(OperationFailed) as caught:
        with _after_its_write():
            raise error
    assert caught.value is error and error.rolled_back is after
