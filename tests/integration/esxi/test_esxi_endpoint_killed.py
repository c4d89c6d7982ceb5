"""The vSphere endpoint killed (SIGKILL of the simulator process) with one of gpupass's writes on the wire (held at
vcsim's `/gpupass/hold`, so the kill comes before the endpoint carried it out). The simulator keeps its inventory in
memory only, so the host cannot be read after the kill, nor a restarted one compared with it: what these tests check
is gpupass's report -- the outcome not known, never "rolled back", nothing assumed, no traceback, the host named.
(What a real vCenter does with a write it received when its vpxd dies is not modelled; docs/faults.md says so.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseOptions, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4, _t4_held_by_vmkernel, find_vm  # noqa: E402


def _killed_with(sim, call, request, skip=0):
    """Run `request` in this process with a 2 s timeout; SIGKILL the simulator while `call` waits at its hold."""
    import dataclasses

    from gpupass.backends.esxi.backend import EsxiBackend

    backend = EsxiBackend(dataclasses.replace(target(sim), timeout=2.0))
    planned = plan(backend, request)
    sim.hold(call, skip=skip)

    def kill_when_held():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if sim.held() == call:
                    os.kill(sim.pid, signal.SIGKILL)
                    return
            except Exception:  # noqa: BLE001 - the control endpoint between two polls
                pass
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_held, daemon=True)
    killer.start()
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, planned)
    finally:
        killer.join(35)
        backend._drop_session()  # nobody to log out from
    assert sim._proc.wait(10) == -signal.SIGKILL, "the simulator was not killed with the call held"
    error = caught.value
    assert error.rolled_back is False, error.message
    assert "127.0.0.1" in error.message and "not known" in error.message, error.message
    return error


def test_the_endpoint_killed_with_the_assign_reconfigure_on_the_wire_is_reported_not_known(fresh_vcsim):
    sim = fresh_vcsim(username=USER)
    error = _killed_with(sim, "ReconfigVM_Task", AssignmentRequest("ml-train", (A100_ACTIVE,)))
    assert "whether the reconfiguration happened is not known" in error.message, error.message


def test_the_endpoint_killed_with_the_passthrough_switch_on_the_wire_is_reported_not_known(fresh_vcsim):
    sim = fresh_vcsim(username=USER)
    error = _killed_with(sim, "UpdatePassthruConfig", AssignmentRequest("cad-ws", (T4,)))
    assert "enable passthrough" in error.message and "could not be undone" in error.message, error.message


@pytest.mark.parametrize("call", ["EnterMaintenanceMode_Task", "RebootHost_Task"])
def test_the_endpoint_killed_with_a_host_task_of_the_reboot_step_on_the_wire_sends_nothing_more(fresh_vcsim, call):
    from pyVim.task import WaitForTask

    sim = fresh_vcsim(_t4_held_by_vmkernel(), username=USER)
    WaitForTask(find_vm(sim.connect(), "web01").PowerOffVM_Task())
    error = _killed_with(sim, call, AssignmentRequest("cad-ws", (T4,), AssignOptions(allow_host_reboot=True)))
    assert "nothing more was sent to host esx01.lab.local" in error.message, error.message


def test_the_endpoint_killed_with_the_release_reconfigure_on_the_wire_is_reported_not_known(fresh_vcsim):
    from tests.integration.esxi.test_esxi_release_faults import _assigned

    sim = fresh_vcsim(username=USER)
    backend, _, _ = _assigned(sim)
    backend.close()
    error = _killed_with(sim, "ReconfigVM_Task",
                         ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True)))
    assert "whether the reconfiguration happened is not known" in error.message, error.message
