"""Faults around an ESXi assign: the vSphere endpoint frozen (SIGSTOP) just before gpupass's first write, then
thawed. gpupass gives up after the host's timeout, cannot read the VM back either, and says the outcome is
not known (never an assumed rollback); the thawed endpoint carries out the request that was waiting (the
change and its claim, one ReconfigVM_Task), which `status` then shows as done, and the same assign run again
converges."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402


def test_an_endpoint_frozen_mid_assign_is_reported_as_unknown_and_a_rerun_converges(fresh_vcsim):
    from dataclasses import replace

    from gpupass.backends.esxi.backend import EsxiBackend

    sim = fresh_vcsim(username=USER)
    backend = EsxiBackend(replace(target(sim), timeout=1.0))
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
    send_now = backend._send

    def freeze_then_send(name, config, before):  # the fault's timing: frozen just before the first write
        os.kill(sim.pid, signal.SIGSTOP)
        return send_now(name, config, before)

    backend._send = freeze_then_send
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
    finally:
        os.kill(sim.pid, signal.SIGCONT)
    assert caught.value.rolled_back is False
    assert "did not answer within 1s" in caught.value.message and "not known" in caught.value.message
    backend.close()

    with EsxiBackend(target(sim)) as again:
        # The thawed endpoint serves the waiting request when it gets to it: the whole change, claim included,
        # since the change and the claim are one ReconfigVM_Task; so the VM is "after", not half-way.
        deadline = time.monotonic() + 10
        while A100_ACTIVE not in again.inventory().find_vm("ml-train").assigned and time.monotonic() < deadline:
            time.sleep(0.05)
        vm = again.inventory().find_vm("ml-train")
        assert vm.assigned == (A100_ACTIVE,) and vm.unfinished == ()
        rerun = plan(again, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        assert rerun.steps == ()  # the same assign again converges: nothing left to do
        execute(again, rerun)
        vm = again.inventory().find_vm("ml-train")
        assert vm.assigned == (A100_ACTIVE,) and vm.unfinished == ()
