"""Faults around an ESXi release (the assign's are in test_esxi_faults.py): the reply to the release's
reconfigure lost after vSphere carried it out, the reply to its passthrough switch-back lost the same way, and
the endpoint frozen (SIGSTOP) with the reconfigure about to be sent. Each time gpupass reads the host back and
reports what is there -- never an assumed outcome -- and the same release run again converges."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gpupass.core.domain.request import AssignmentRequest, ReleaseOptions, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS, killed_with_call_held  # noqa: E402
from support.esxi_faults import frozen_before_its_write  # noqa: E402
from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, gpu, plan, target  # noqa: E402

ESX02 = "esx02.lab.local"


def _assigned(sim):
    """ml-train with the A100 (a plain assign: one reconfigure) -> (backend, the VM before, the VM assigned)."""
    from gpupass.backends.esxi.backend import EsxiBackend

    backend = EsxiBackend(target(sim))
    before = backend.inventory().find_vm("ml-train")
    execute(backend, plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,))))
    assigned = backend.inventory().find_vm("ml-train")
    assert assigned.assigned == (A100_ACTIVE,)
    return backend, before, assigned


def test_a_lost_reply_to_the_release_reconfigure_is_read_back_and_reported_and_a_rerun_converges(fresh_vcsim):
    """vSphere removed the device (and the restore record with it) but the answer never came: gpupass reads the
    VM back, finds the release applied, puts the VM back as it was before the release (device, reservation, MMIO
    and its record, so a later release can still restore them) and says so; the same release again finishes."""
    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    try:
        release = plan(backend, ReleaseRequest("ml-train"))
        assert [s.action for s in release.steps] == ["esxi.reconfigure"]
        sim.drop_reply("ReconfigVM_Task")
        with pytest.raises(OperationFailed) as caught:
            execute(backend, release)
        assert caught.value.rolled_back is True, caught.value.message
        assert "what vSphere had applied of it was taken back" in caught.value.message
        assert backend.inventory().find_vm("ml-train") == assigned          # exactly as before the release
        execute(backend, plan(backend, ReleaseRequest("ml-train")))        # the same release again
        assert backend.inventory().find_vm("ml-train") == before           # settings restored from the record
    finally:
        backend.close()


def test_a_lost_reply_to_the_passthrough_switch_back_of_a_release_is_read_back_and_undone(fresh_vcsim):
    """release --disable-host-passthrough: the host switched the device off but its answer was lost. gpupass reads
    the host back (switched), switches it on again and puts the device back on the VM: as it was, and says so."""
    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    try:
        request = ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True))
        release = plan(backend, request)
        assert [s.action for s in release.steps] == ["esxi.reconfigure", "esxi.passthrough", "esxi.end-intent"]
        sim.drop_reply("UpdatePassthruConfig")
        with pytest.raises(OperationFailed) as caught:
            execute(backend, release)
        assert caught.value.rolled_back is True, caught.value.message
        # the switch read back as done is undone with the reconfigure before it, and counted apart from it
        assert "the failed step, which had gone through, and 1 completed step(s) were undone" in caught.value.message
        facts = backend.inventory()
        assert facts.find_vm("ml-train") == assigned
        assert gpu(facts, ESX02, A100_ACTIVE).passthrough.enabled is True
        execute(backend, plan(backend, request))                             # the same release again
        facts = backend.inventory()
        assert facts.find_vm("ml-train") == before
        assert gpu(facts, ESX02, A100_ACTIVE).passthrough.enabled is False
    finally:
        backend.close()


def test_an_endpoint_frozen_mid_release_is_reported_as_unknown_and_a_rerun_converges(fresh_vcsim):
    """Frozen with the release's reconfigure about to go: gpupass gives up after the host's timeout, cannot read
    the VM back either and says the outcome is not known; the thawed endpoint carries out the waiting request
    (device and record removed together, one ReconfigVM_Task), `status` shows the VM released with nothing
    unfinished, and the same release again has nothing left to do."""
    from gpupass.backends.esxi.backend import EsxiBackend

    sim = fresh_vcsim(username=USER)
    backend, before, _ = _assigned(sim)
    backend.close()
    with EsxiBackend(target(sim)) as again:
        frozen_before_its_write(sim, target(sim), ReleaseRequest("ml-train"),
                                lambda: not again.inventory().find_vm("ml-train").assigned)
        assert again.inventory().find_vm("ml-train") == before
        rerun = plan(again, ReleaseRequest("ml-train"))
        assert rerun.steps == ()
        execute(again, rerun)
        assert again.inventory().find_vm("ml-train") == before


class KilledRelease:
    """ml-train holding the A100 on esx02, and a real `gpupass release --disable-host-passthrough` of it."""

    def __init__(self, fresh_vcsim):
        self.sim = fresh_vcsim(username=USER)
        backend, self.before, _ = _assigned(self.sim)
        backend.close()
        self.uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{self.sim.port}/Lab"
        self.env = {**os.environ, "GPUPASS_PASSWORD": self.sim.password}
        self.release = ["release", self.uri, "ml-train", f"{ESX02}/{A100_ACTIVE}", "--yes",
                        "--disable-host-passthrough"]

    def gpupass(self, *args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(self.sim.ca_file)], env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def killed_with_call_on_the_wire(self, call):
        """Run the release in its own process, kill it while `call` waits at the simulator, let the call through."""
        killed_with_call_held(self.sim, call, self.release, self.env)

    def ml_train(self):
        status = self.gpupass("status", self.uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "ml-train")

    def a100(self):
        host = next(h for h in self.sim.state()["hosts"] if h["name"] == ESX02)
        return next(d for d in host["devices"] if d["id"] == str(A100_ACTIVE))

    def vm(self):
        from gpupass.backends.esxi.backend import EsxiBackend

        with EsxiBackend(target(self.sim)) as backend:
            return backend.inventory().find_vm("ml-train")

    def rerun_finishes(self, actions):
        """The same release again plans `actions` and leaves the VM released, passthrough off, nothing unfinished."""
        again = self.gpupass(*self.release, "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        done = json.loads(again.stdout)
        assert done["applied"] is True and [s["action"] for s in done["plan"]["steps"]] == actions, done
        assert self.ml_train()["unfinished"] == []
        assert self.a100()["enabled"] is False
        assert self.vm() == self.before
        nothing = self.gpupass(*self.release, "--json")                  # and once more: nothing left to do
        assert nothing.returncode == 0 and json.loads(nothing.stdout)["applied"] is False, nothing.stdout


def test_a_release_killed_with_its_reconfigure_on_the_wire_leaves_an_intent_status_shows_and_a_rerun_finishes(
        fresh_vcsim):
    """Killed with the release's ReconfigVM_Task on the wire, which vSphere then carries out: the device is off the VM
    and its settings restored, passthrough still on (the switch-back never ran) -- and the intent record the same
    reconfigure wrote says so in `status`; the same release again switches passthrough off and removes the record."""
    lab = KilledRelease(fresh_vcsim)
    lab.killed_with_call_on_the_wire("ReconfigVM_Task")
    assert lab.a100()["enabled"] is True
    vm = lab.ml_train()
    assert vm["assigned"] == [] and len(vm["unfinished"]) == 1, vm
    note = vm["unfinished"][0]
    assert f"passthrough of {A100_ACTIVE} on host {ESX02} is still on" in note, note
    assert f"gpupass release HOST ml-train {ESX02}/{A100_ACTIVE} --disable-host-passthrough" in note, note
    lab.rerun_finishes(["esxi.passthrough", "esxi.end-intent"])


def test_a_release_killed_with_its_switch_back_on_the_wire_leaves_an_intent_status_shows_and_a_rerun_clears(
        fresh_vcsim):
    """Killed with UpdatePassthruConfig on the wire, which the host then carries out: released and switched off, only
    the last step (removing the record) not made -- `status` says the switch-back is done, the rerun only clears."""
    lab = KilledRelease(fresh_vcsim)
    lab.killed_with_call_on_the_wire("UpdatePassthruConfig")
    assert lab.a100()["enabled"] is False
    vm = lab.ml_train()
    assert vm["assigned"] == [] and len(vm["unfinished"]) == 1, vm
    assert f"passthrough of {A100_ACTIVE} on host {ESX02} is off" in vm["unfinished"][0], vm
    lab.rerun_finishes(["esxi.end-intent"])


# -- the release's last write: its intent record removed (one ReconfigVM_Task after the switch-back) ---------------
def test_a_release_killed_with_its_record_removal_on_the_wire_carried_out_is_exactly_released(fresh_vcsim):
    """Killed with its last ReconfigVM_Task (the record's removal, the second of the release) on the wire, which
    vSphere then carries out: the release is whole -- `status` has nothing to say, the same release has nothing to do."""
    lab = KilledRelease(fresh_vcsim)
    killed_with_call_held(lab.sim, "ReconfigVM_Task", lab.release, lab.env, skip=1)
    assert lab.a100()["enabled"] is False
    assert lab.ml_train()["unfinished"] == []
    assert lab.vm() == lab.before
    nothing = lab.gpupass(*lab.release, "--json")
    assert nothing.returncode == 0 and json.loads(nothing.stdout)["applied"] is False, nothing.stdout


def test_a_release_killed_with_its_record_removal_lost_on_the_way_leaves_the_record_and_a_rerun_clears_it(
        fresh_vcsim):
    """The same kill, the removal lost before vSphere saw it: released and switched off, the record still there --
    `status` says the switch-back is done, and the same release again only removes the record."""
    lab = KilledRelease(fresh_vcsim)
    killed_with_call_held(lab.sim, "ReconfigVM_Task", lab.release, lab.env, skip=1, discard=True)
    assert lab.a100()["enabled"] is False
    vm = lab.ml_train()
    assert vm["assigned"] == [] and len(vm["unfinished"]) == 1, vm
    assert f"passthrough of {A100_ACTIVE} on host {ESX02} is off" in vm["unfinished"][0], vm
    lab.rerun_finishes(["esxi.end-intent"])


def _release_switching_off(backend):
    request = ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True))
    release = plan(backend, request)
    assert [s.action for s in release.steps] == ["esxi.reconfigure", "esxi.passthrough", "esxi.end-intent"]
    return request, release


def test_a_lost_reply_to_the_record_removal_is_read_back_and_the_release_undone_and_a_rerun_converges(fresh_vcsim):
    """The record's removal carried out, its answer lost: gpupass reads the VM back (the record gone: the step done),
    and takes the release back as for any step whose reply was lost -- the record, the switch-back and the
    reconfigure -- and says so; the same release again finishes."""
    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    try:
        request, release = _release_switching_off(backend)
        sim.drop_reply("ReconfigVM_Task", skip=1)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, release)
        assert caught.value.rolled_back is True, caught.value.message
        assert "the failed step, which had gone through, and 2 completed step(s) were undone" in caught.value.message
        facts = backend.inventory()
        assert facts.find_vm("ml-train") == assigned                       # exactly as before the release
        assert gpu(facts, ESX02, A100_ACTIVE).passthrough.enabled is True
        execute(backend, plan(backend, request))                             # the same release again
        facts = backend.inventory()
        assert facts.find_vm("ml-train") == before and facts.find_vm("ml-train").unfinished == ()
        assert gpu(facts, ESX02, A100_ACTIVE).passthrough.enabled is False
    finally:
        backend.close()


def test_an_endpoint_frozen_before_the_record_removal_is_reported_as_unknown_and_a_rerun_converges(fresh_vcsim):
    """Frozen with the record's removal about to go: gpupass gives up after the host's timeout and cannot read the VM
    or undo the steps before (the endpoint does not answer), and says so, never "rolled back"; the thawed endpoint
    removes the record: exactly released, `status` has nothing to say and the same release has nothing to do."""
    from gpupass.backends.esxi.backend import EsxiBackend

    sim = fresh_vcsim(username=USER)
    backend, before, _ = _assigned(sim)
    backend.close()
    request = ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True))
    with EsxiBackend(target(sim)) as again:
        error = frozen_before_its_write(sim, target(sim), request,
                                        lambda: not again.inventory().find_vm("ml-train").unfinished, write="_set_extra")
        assert "remove the release's record" in error.message, error.message
        assert "the host could not be read again" in error.message and "could not be undone" in error.message
        assert "once the host answers" in error.remedy, error.remedy
        facts = again.inventory()
        assert facts.find_vm("ml-train") == before and facts.find_vm("ml-train").unfinished == ()
        assert gpu(facts, ESX02, A100_ACTIVE).passthrough.enabled is False
        rerun = plan(again, request)
        assert rerun.steps == ()


def test_the_record_removal_leaves_a_change_made_to_the_vm_after_the_switch_back(fresh_vcsim):
    """Between the switch-back and the record's removal, another run writes in the VM: an admin's own extraConfig
    key, then an assign that began there writes its intent record over the release's. The removal reads the VM
    again and writes with the changeVersion it read: the admin's key stays, and the other run's record is not
    the release's to remove, so it stays too (`status` shows that run's record)."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    from tests.integration.esxi.test_esxi_host_rules import find_vm

    sim = fresh_vcsim(username=USER)
    backend, before, _ = _assigned(sim)
    si = sim.connect()
    other = '{"gpus":["0000:d8:00.0"],"op":"assign","origin":"another-admin","steps":["enable passthrough"]}'

    def another_run_writes(step):
        if step.action == "esxi.end-intent":
            for key, value in (("guestinfo.owner", "team-a"), ("gpupass.intent", other)):
                spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])
                WaitForTask(find_vm(si, "ml-train").ReconfigVM_Task(spec))

    try:
        _, release = _release_switching_off(backend)
        execute(backend, release, on_step=another_run_writes)
        extra = {o.key: o.value for o in find_vm(si, "ml-train").config.extraConfig}
        assert extra.get("guestinfo.owner") == "team-a" and extra.get("gpupass.intent") == other, extra
        vm = backend.inventory().find_vm("ml-train")
        assert vm.assigned == () and len(vm.unfinished) == 1 and "another-admin" in vm.unfinished[0], vm
    finally:
        backend.close()


def test_an_endpoint_frozen_before_the_switch_back_is_reported_unknown_and_a_rerun_finishes(fresh_vcsim):
    """Frozen with the release's UpdatePassthruConfig (passthrough off) about to go, its reconfigure done: gpupass
    gives up, cannot read the host back nor undo the reconfigure (the endpoint does not answer), and says so; the
    thawed host switches the A100 off; `status` shows the release's record, and the same release again only removes
    it: exactly released."""
    from gpupass.backends.esxi.backend import EsxiBackend

    sim = fresh_vcsim(username=USER)
    backend, before, _ = _assigned(sim)
    backend.close()
    request = ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True))
    with EsxiBackend(target(sim)) as again:
        def switched_off():
            return gpu(again.inventory(), ESX02, A100_ACTIVE).passthrough.enabled is False

        error = frozen_before_its_write(sim, target(sim), request, switched_off, action="disabling passthrough")
        assert "disable passthrough" in error.message and "could not be undone" in error.message, error.message
        assert "once the host answers" in error.remedy, error.remedy
        vm = again.inventory().find_vm("ml-train")
        assert vm.assigned == () and len(vm.unfinished) == 1, vm
        assert "passthrough of 0000:3b:00.0 on host esx02.lab.local is off" in vm.unfinished[0], vm.unfinished
        rerun = plan(again, request)
        assert [s.action for s in rerun.steps] == ["esxi.end-intent"]
        execute(again, rerun)
        facts = again.inventory()
        assert facts.find_vm("ml-train") == before and facts.find_vm("ml-train").unfinished == ()
        assert plan(again, request).steps == ()
