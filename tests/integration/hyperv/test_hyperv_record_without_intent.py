"""A gpupass restore record without an intent on a VM that holds no device (issue 10).

An older gpupass wrote no intent before its release; an assign whose own undo failed on the host after its first
Set-VM leaves the record that Set-VM wrote; an admin may have removed the device by hand. Each leaves the VM without
devices and with its settings not restored. `gpupass status` shows it (the inventory returns every VM's gpupass
record, whatever its settings); where no device on the host is left dismounted or disabled the record says all that
is left -- the settings -- and `gpupass release HOST VM` restores them and removes it. Where some device is left so,
the record does not say whose it is: status names each with what gives it back by hand, `release HOST VM` restores
the settings and leaves the devices, and `release HOST VM GPU` gives the GPU named back to the host as well.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import lab_host
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from gpupass.core.testing import HOSTILE_NAMES
from hyperv_helpers import PASSWORD, USER, Remote
from support.cli import GPUPASS

GPU = address_map([A100_2_LOC])[A100_2_LOC]
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


def cli(*args):
    return subprocess.run([*GPUPASS, *args], env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def unfinished(uri, vm):
    status = cli("status", uri, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == vm)["unfinished"]


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


@pytest.fixture
def lab(endpoint_factory):
    """ml-train holding the A100 through gpupass, its record in its notes without an intent (as every assign writes
    it, and as an older gpupass left it through its release)."""
    def start(vm: str = "ml-train"):
        model = lab_host()
        model.vm("ml-train").name = vm
        model.vm(vm).notes = "owner: ml team"
        original = model.to_dict()
        ep = endpoint_factory(model, "basic")
        backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic",
                                       password=Secret(PASSWORD)))
        execute(backend, plan(backend, AssignmentRequest(vm, (GPU,))))
        assert S.RECORD_BEGIN in model.vm(vm).notes and "Releasing" not in model.vm(vm).notes
        return model, ep, backend, original
    return start


def older_release_stopped(ep, vm, steps):
    """What an older gpupass's release did before its last Set-VM, as PowerShell over WinRM (it wrote no intent):
    `steps` of Remove-VMAssignableDevice, Mount-VMHostAssignableDevice, Enable-PnpDevice, then it stopped."""
    model = ep.model
    iid = model.device_by_location(A100_2_LOC).instance_id
    # by -eq, not Get-VM -Name, which takes wildcards (a hostile name would not find itself)
    lines = {"remove": f"foreach($x in @(Get-VM)){{if($x.Name -eq {S.ps_quote(vm)}){{"
                       "Get-VMAssignableDevice -VM $x | Remove-VMAssignableDevice}}",
             "mount": f"Mount-VMHostAssignableDevice -LocationPath {S.ps_quote(A100_2_LOC)}",
             "enable": f"Enable-PnpDevice -InstanceId {S.ps_quote(iid)} -Confirm:$false"}
    for step in steps:
        result = Remote(ep, "basic").ps(lines[step])
        assert result.status_code == 0, result.std_err


def test_settings_left_with_no_device_left_are_restored_by_the_release(lab):
    """The older release gave the device back whole and stopped before its Set-VM: nothing on the host is left
    dismounted or disabled, so the record says all there is to do."""
    model, ep, backend, original = lab()
    uri = backend.target.uri
    older_release_stopped(ep, "ml-train", ["remove", "mount", "enable"])
    (left,) = unfinished(uri, "ml-train")
    assert "stop action and MMIO are not restored" in left and "no device is left dismounted or disabled" in left
    assert f"`gpupass release {shlex.quote(uri)} ml-train` restores the settings" in left
    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == []
    assert json.loads(cli("release", uri, "ml-train", "--yes", "--json").stdout)["changed"] is False


@pytest.mark.parametrize("steps", [["remove"], ["remove", "mount"]])
def test_a_device_left_is_named_and_given_back_by_the_release_that_names_it(lab, steps):
    model, ep, backend, original = lab()
    uri = backend.target.uri
    older_release_stopped(ep, "ml-train", steps)
    device = model.device_by_location(A100_2_LOC)
    assert device.assigned_vm is None and not device.enabled and device.dismounted is (steps == ["remove"])
    (left,) = unfinished(uri, "ml-train")
    release = f"gpupass release {shlex.quote(uri)} ml-train"
    assert "the record does not say which device was this VM's" in left
    by_hand = f"Enable-PnpDevice -InstanceId {S.ps_quote(device.instance_id)} -Confirm:$false"
    if device.dismounted:
        by_hand = f"Mount-VMHostAssignableDevice -LocationPath {S.ps_quote(A100_2_LOC)}, then " + by_hand
        assert f"{GPU} is dismounted from the host and on no VM (by hand: {by_hand})" in left
    else:
        assert f"{GPU} is disabled on the host (by hand: {by_hand})" in left
    assert f"`{release}` restores the settings and leaves the devices as they are" in left
    assert f"`{release} {GPU}`" in left
    again = cli("release", uri, "ml-train", str(GPU), "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original                   # device mounted and enabled, settings and notes as before
    assert unfinished(uri, "ml-train") == []
    assert json.loads(cli("release", uri, "ml-train", "--yes", "--json").stdout)["changed"] is False


def test_the_release_without_a_gpu_restores_the_settings_and_leaves_the_device(lab):
    """The device may be one an admin dismounted for another VM: `release HOST VM` alone does not touch it."""
    model, ep, backend, original = lab()
    uri = backend.target.uri
    older_release_stopped(ep, "ml-train", ["remove"])
    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    vm, before = model.vm("ml-train"), next(v for v in original["vms"] if v["name"] == "ml-train")
    assert (vm.automatic_stop_action, vm.low_mmio, vm.high_mmio, vm.guest_controlled_cache_types, vm.notes) == (
        before["automatic_stop_action"], before["low_mmio"], before["high_mmio"],
        before["guest_controlled_cache_types"], before["notes"])
    device = model.device_by_location(A100_2_LOC)
    assert device.dismounted and device.assigned_vm is None and not device.enabled   # left as it was
    assert unfinished(uri, "ml-train") == []


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_record_without_intent_on_a_vm_with_a_hostile_name_is_finished_exactly(lab, name):
    model, ep, backend, original = lab(name)
    older_release_stopped(ep, name, ["remove"])
    facts = backend.inventory()
    (left,) = facts.find_vm(name).unfinished
    assert f"`gpupass release {shlex.quote(backend.target.label)} {shlex.quote(name)} {GPU}`" in left
    finishing = make_plan(backend, facts, ReleaseRequest(name, (GPU,)), plugins.default_registry())
    (step,) = finishing.steps
    assert S.ps_quote(name) in step.preview and S.ps_quote(A100_2_LOC) in step.preview
    execute(backend, finishing)
    assert model.to_dict() == original
    assert backend.inventory().find_vm(name).unfinished == ()


def test_an_assign_whose_undo_failed_on_the_host_is_shown_and_finished(lab):
    """An assign failing at Dismount-VMHostAssignableDevice, whose own undo then fails at its Set-VM: the device is
    enabled again, the VM keeps the assign's settings and its record, without a device. The error says the undo was
    not made; `status` shows what is left and the release finishes it."""
    model, ep, backend, original = lab()
    uri = backend.target.uri
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert model.to_dict() == original
    assign = plan(backend, AssignmentRequest("ml-train", (GPU,)))
    ep.inject_fault("Dismount-VMHostAssignableDevice")
    ep.inject_fault("Set-VM", 2)                       # the assign's first Set-VM goes through, its undo's does not
    with pytest.raises(OperationFailed) as caught:
        execute(backend, assign)
    ep.clear_faults()
    assert caught.value.rolled_back is False, caught.value.message
    device, vm = model.device_by_location(A100_2_LOC), model.vm("ml-train")
    assert device.enabled and not device.dismounted and device.assigned_vm is None
    assert vm.automatic_stop_action == "TurnOff" and S.RECORD_BEGIN in vm.notes
    (left,) = unfinished(uri, "ml-train")
    assert "an assign stopped on the host" in left and "no device is left dismounted or disabled" in left
    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == []


def test_a_record_copied_from_another_vm_is_shown_with_what_is_wrong(lab):
    """A VM copied with its notes carries the other VM's record: a release of it refuses the record before any change,
    so `status` says so, and offers no release that would finish it."""
    model, ep, backend, _ = lab()
    model.vm("render01").notes = model.vm("ml-train").notes
    (left,) = unfinished(backend.target.uri, "render01")
    assert S.RECORD_DAMAGE["vm"] in left and "a release of this VM refuses it" in left
    assert unfinished(backend.target.uri, "ml-train") == []
    assert plan(backend, ReleaseRequest("render01")).steps == ()
