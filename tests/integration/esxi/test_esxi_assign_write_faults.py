"""Faults on the two writes of an ESXi assign that reach the VM: its one ReconfigVM_Task (the change with its claim)
and, before host steps, its intent record (a ReconfigVM_Task of one extraConfig key). A reply lost after vSphere
carried the write out, a real `gpupass assign` process killed (SIGKILL) with the write on the wire (carried out
after, or lost on the way), the endpoint frozen (SIGSTOP) with the write about to go. Each time the VM and the host
are exactly before or after -- or the run's intent is shown by `status` -- and the same assign again converges."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS, killed_with_call_held  # noqa: E402
from support.esxi_faults import frozen_before_its_write  # noqa: E402
from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4  # noqa: E402

ESX01 = "esx01.lab.local"


class Cli:
    """The lab's simulator with a CLI on it, as an admin runs gpupass."""

    def __init__(self, fresh_vcsim):
        self.sim = fresh_vcsim(username=USER)
        self.uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{self.sim.port}/Lab"
        self.env = {**os.environ, "GPUPASS_PASSWORD": self.sim.password}

    def gpupass(self, *args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(self.sim.ca_file)], env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def vm(self, name):
        status = self.gpupass("status", self.uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == name)

    def backend(self):
        from gpupass.backends.esxi.backend import EsxiBackend

        return EsxiBackend(target(self.sim))

    def t4(self):
        host = next(h for h in self.sim.state()["hosts"] if h["name"] == ESX01)
        return next(d for d in host["devices"] if d["id"] == str(T4))


# -- the assign's reconfigure (ml-train and the A100 already passthrough-active: no host step, no intent) ----------
def test_a_lost_reply_to_the_assign_reconfigure_is_read_back_and_taken_back_and_a_rerun_converges(fresh_vcsim):
    """vSphere added the device with its claim, the answer never came: gpupass reads the VM back, finds the change and
    reconfigures it back -- exactly as before, claim included -- and says so; the same assign again gives the A100."""
    lab = Cli(fresh_vcsim)
    with lab.backend() as backend:
        before = backend.inventory().find_vm("ml-train")
        result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        assert [s.action for s in result.steps] == ["esxi.reconfigure"]
        lab.sim.drop_reply("ReconfigVM_Task")
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
        assert caught.value.rolled_back is True, caught.value.message
        assert "what vSphere had applied of it was taken back" in caught.value.message
        assert backend.inventory().find_vm("ml-train") == before
    again = lab.gpupass("assign", lab.uri, "ml-train", str(A100_ACTIVE), "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    vm = lab.vm("ml-train")
    assert vm["assigned"] == [str(A100_ACTIVE)] and vm["unfinished"] == [], vm


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_assign_reconfigure_on_the_wire_leaves_the_vm_exactly_before_or_after(
        fresh_vcsim, discard):
    """Carried out after the kill: the A100 on ml-train with its claim, nothing unfinished, the same assign again has
    nothing to do. Lost on the way: ml-train exactly as before, nothing unfinished; the same assign again gives it."""
    lab = Cli(fresh_vcsim)
    with lab.backend() as backend:
        before = backend.inventory().find_vm("ml-train")
    assign = ["assign", lab.uri, "ml-train", str(A100_ACTIVE), "--yes"]
    killed_with_call_held(lab.sim, "ReconfigVM_Task", assign, lab.env, discard=discard)
    vm = lab.vm("ml-train")
    assert vm["unfinished"] == [], vm
    if discard:
        with lab.backend() as backend:
            assert backend.inventory().find_vm("ml-train") == before
    else:
        assert vm["assigned"] == [str(A100_ACTIVE)], vm
    again = lab.gpupass(*assign, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["applied"] is (discard is True), again.stdout
    vm = lab.vm("ml-train")
    assert vm["assigned"] == [str(A100_ACTIVE)] and vm["unfinished"] == [], vm


# -- the intent record (cad-ws and the T4, whose passthrough switch is a host step) -------------------------------
def test_a_lost_reply_to_the_intent_record_is_read_back_and_removed_and_a_rerun_converges(fresh_vcsim):
    """vSphere wrote the record, the answer never came: gpupass reads the VM back, finds its record and takes it back
    -- nothing else was sent: the VM and the T4 exactly as before -- and the same assign again finishes."""
    lab = Cli(fresh_vcsim)
    with lab.backend() as backend:
        before = backend.inventory()
        result = plan(backend, AssignmentRequest("cad-ws", (T4,)))
        assert [s.action for s in result.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"]
        lab.sim.drop_reply("ReconfigVM_Task")
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
        assert caught.value.rolled_back is True, caught.value.message
        after = backend.inventory()
        assert after.find_vm("cad-ws") == before.find_vm("cad-ws")
        assert [g.passthrough for g in after.gpus] == [g.passthrough for g in before.gpus]
        execute(backend, plan(backend, AssignmentRequest("cad-ws", (T4,))))
        vm = backend.inventory().find_vm("cad-ws")
        assert T4 in vm.assigned and vm.unfinished == ()


def test_a_client_killed_with_the_intent_record_on_the_wire_is_shown_by_status_and_a_rerun_finishes(fresh_vcsim):
    """Carried out after the kill: the VM holds the run's record and nothing else (the T4 not switched); `status`
    shows the stopped assign; the same assign again finishes it and clears the record."""
    lab = Cli(fresh_vcsim)
    assign = ["assign", lab.uri, "cad-ws", str(T4), "--yes"]
    enabled = lab.t4()["enabled"]
    killed_with_call_held(lab.sim, "ReconfigVM_Task", assign, lab.env)
    vm = lab.vm("cad-ws")
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert "run the same `gpupass assign` again" in vm["unfinished"][0]
    assert lab.t4()["enabled"] is enabled
    again = lab.gpupass(*assign)
    assert again.returncode == 0, again.stdout + again.stderr
    vm = lab.vm("cad-ws")
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm


def test_an_endpoint_frozen_before_the_intent_record_is_reported_unknown_and_a_rerun_finishes(fresh_vcsim):
    """Frozen with the record about to go: gpupass gives up, cannot read the VM back, and says so (never "rolled
    back"); the thawed endpoint writes the record; `status` shows the stopped assign; the same assign again finishes."""
    lab = Cli(fresh_vcsim)
    request = AssignmentRequest("cad-ws", (T4,))
    with lab.backend() as again:
        error = frozen_before_its_write(lab.sim, target(lab.sim), request,
                                        lambda: bool(again.inventory().find_vm("cad-ws").unfinished),
                                        write="_set_extra")
        assert "record in VM 'cad-ws'" in error.message and "could not be read again" in error.message, error.message
        vm = again.inventory().find_vm("cad-ws")
        assert T4 not in vm.assigned and len(vm.unfinished) == 1, vm
        execute(again, plan(again, request))
        vm = again.inventory().find_vm("cad-ws")
        assert T4 in vm.assigned and vm.unfinished == ()
