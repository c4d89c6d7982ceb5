"""Every call bounded (issue 10): a script the host keeps running. WinRM answers each Receive of a running command with
the OperationTimeout fault and pywinrm's own loop (Protocol.get_command_output) polls again forever; gpupass polls for
at most the host's timeout, then ends the command, says the outcome is not known (naming the host) and reads the host
again. Real pywinrm against the lab endpoint, whose `stall_next_script` keeps the command running."""
from __future__ import annotations

import io
import sys
import time

import pytest

from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.errors import ScriptStillRunning
from gpupass.core import plugins, progress
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, rtx_host

ASSIGN_SCRIPT = "Add-VMAssignableDevice -LocationPath $p -VM $v"   # what tells the assign script from the others


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def backend_on(ep, timeout: float) -> HypervBackend:
    return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv-slow",
                                password=Secret(PASSWORD), timeout=timeout))


def assign_plan(backend: HypervBackend):
    facts = backend.inventory()
    rtx = next(g for g in facts.gpus if "4090" in g.function.name)
    return make_plan(backend, facts, AssignmentRequest("ml-train", (rtx.address,)), plugins.default_registry()), rtx


def test_a_script_that_never_ends_is_given_up_after_the_hosts_timeout_and_the_host_read_again(endpoint_factory):
    ep = endpoint_factory(rtx_host(), "basic")
    backend = backend_on(ep, timeout=2)   # pywinrm: read timeout 2 s, OperationTimeout 1 s
    plan, _ = assign_plan(backend)
    before = ep.model.to_dict()
    ep.stall_next_script(ASSIGN_SCRIPT, after=0)   # it hangs before its first statement, for ever
    reads = len(ep.scripts)
    began = time.monotonic()
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    took = time.monotonic() - began
    cause = caught.value.__cause__
    # the backend's own error: the host named, the outcome not known (no rolled_back: the core reads the host again)
    assert isinstance(cause, ScriptStillRunning) and not hasattr(cause, "rolled_back"), cause
    assert "hv-slow" in cause.message and "not known" in cause.message and "after 2 s" in cause.message
    assert "timeout" in (cause.remedy or "")
    # bounded: the host's 2 s plus the read-back, not pywinrm's endless polling
    assert took < 15, took
    assert ep.stall_ended.is_set()   # the command was ended on the host (Signal terminate / the shell's Delete)
    # the host was read again after the script, and found as it was: that, and only that, makes it "as it was"
    assert any("Get-VM" in s for s in ep.scripts[reads + 1:]), "the host was not read again"
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message
    assert "still running on the host" in caught.value.message
    assert ep.model.to_dict() == before


def test_a_script_that_did_its_work_but_never_ends_is_read_back_done_and_undone(endpoint_factory):
    """The whole assign ran on the host, its command never ends: not assumed undone; read back, it is there, so it is
    undone with the rest (the release script, restoring the settings recorded by the same script)."""
    ep = endpoint_factory(rtx_host(), "basic")
    backend = backend_on(ep, timeout=2)
    plan, rtx = assign_plan(backend)
    before = ep.model.to_dict()
    ep.stall_next_script(ASSIGN_SCRIPT, after=None)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert isinstance(caught.value.__cause__, ScriptStillRunning)
    assert caught.value.rolled_back is True
    assert "the failed step had gone through and was undone" in caught.value.message
    assert ep.model.to_dict() == before
    # and a rerun converges: the assign made whole
    backend = backend_on(ep, timeout=10)
    plan, rtx = assign_plan(backend)
    execute(backend, plan)
    assert rtx.address in backend.inventory().find_vm("ml-train").assigned


def test_a_slow_script_within_the_timeout_is_waited_for_with_progress_on_a_terminal(endpoint_factory, monkeypatch):
    ep = endpoint_factory(rtx_host(), "basic")
    backend = backend_on(ep, timeout=12)   # OperationTimeout 2 s: the 3 s script is answered after one timeout fault
    plan, rtx = assign_plan(backend)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "_quiet", False)   # a `gpupass --json` run in this process before turns it off
    ep.stall_next_script(ASSIGN_SCRIPT, after=None, seconds=3)
    execute(backend, plan)
    assert rtx.address in backend.inventory().find_vm("ml-train").assigned
    shown = terminal.getvalue()
    assert "hv-slow" in shown and "the host is still running the script" in shown and "up to 12 s" in shown


def test_no_progress_under_json(endpoint_factory, monkeypatch):
    ep = endpoint_factory(rtx_host(), "basic")
    backend = backend_on(ep, timeout=12)
    plan, _ = assign_plan(backend)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "_quiet", False)
    progress.quiet()   # what `gpupass --json` does first (core/cli/main.py)
    ep.stall_next_script(ASSIGN_SCRIPT, after=None, seconds=3)
    execute(backend, plan)
    assert terminal.getvalue() == ""
