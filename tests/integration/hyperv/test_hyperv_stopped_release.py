"""A Hyper-V release stopped half-way, finished by the same release again (issue 10).

The release script writes its intent -- the devices it takes back -- into the VM's restore record before its first
change. When the script then fails on the host after Remove-VMAssignableDevice with no gpupass left to give the
devices back (its client killed: a real SIGKILL with the script held on the wire, or the script run as the killed
client sent it), the device is dismounted and on no VM (or mounted back but disabled), the VM's stop action and MMIO
are not restored and the record is still in its notes. `gpupass status` shows it with the command that finishes it;
that command -- the same release -- mounts and enables the device, restores the settings from the record and removes
the record, exactly once; run again, it has nothing to do.

A device another run assigned meanwhile stays where Hyper-V put it: Add-VMAssignableDevice takes a dismounted device
only, and Mount-VMHostAssignableDevice one that no VM holds (backends/hyperv/scripts.finish_release_script), so
whichever runs first wins and the other fails or leaves it, said so; the host holds one outcome.
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
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from gpupass.core.testing import HOSTILE_NAMES
from hyperv_helpers import PASSWORD, USER, Remote, stop_a_release_half_way
from support.cli import GPUPASS, killed_with_script_held

GPU = address_map([A100_2_LOC])[A100_2_LOC]
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


@pytest.fixture
def lab(endpoint_factory):
    """ml-train holding the A100 through gpupass (its restore record in its notes, after the admin's own notes)."""
    def start(vm: str = "ml-train", turn_off_before: bool = False):
        model = lab_host()
        model.vm("ml-train").name = vm
        model.vm(vm).notes = "owner: ml team"
        if turn_off_before:     # the settings an assign gives, there before it: after a release they are the same
            model.vm(vm).automatic_stop_action, model.vm(vm).guest_controlled_cache_types = "TurnOff", True
        original = model.to_dict()
        ep = endpoint_factory(model, "basic")
        backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic",
                                       password=Secret(PASSWORD)))
        execute(backend, plan(backend, AssignmentRequest(vm, (GPU,))))
        assert S.RECORD_BEGIN in model.vm(vm).notes
        return model, ep, backend, original
    return start


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


def cli(*args):
    return subprocess.run([*GPUPASS, *args], env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def unfinished(uri, vm):
    status = cli("status", uri, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == vm)["unfinished"]


def stopped_by_a_killed_client(model, ep, backend, vm, failing):
    """A real `gpupass release` process killed (SIGKILL) with its script held at the endpoint, which the host then
    runs and fails at `failing`."""
    killed_with_script_held(ep, "Remove-VMAssignableDevice", ["release", backend.target.uri, vm, "--yes"], ENV,
                            while_held=lambda: model.inject_fault(failing))
    model.clear_faults()


def stopped_by_the_script(model, ep, backend, vm, failing):
    stop_a_release_half_way(backend, ep, vm, failing)


@pytest.mark.parametrize("stop", [stopped_by_a_killed_client, stopped_by_the_script])
@pytest.mark.parametrize("failing", ["Mount-VMHostAssignableDevice", "Enable-PnpDevice"])
def test_the_same_release_again_finishes_a_release_stopped_half_way(lab, stop, failing):
    model, ep, backend, original = lab()
    uri = backend.target.uri
    stop(model, ep, backend, "ml-train", failing)
    device = model.device_by_location(A100_2_LOC)
    vm = model.vm("ml-train")
    # half-way: the device left the VM but is not the host's again; the settings and the record are as assigned
    assert device.assigned_vm is None and not device.enabled
    assert device.dismounted is (failing == "Mount-VMHostAssignableDevice")
    assert vm.automatic_stop_action == "TurnOff" and '"Releasing":["' in vm.notes

    (left,) = unfinished(uri, "ml-train")
    state = "dismounted from the host and on no VM" if device.dismounted else "mounted back on the host but still disabled"
    assert f"{GPU} is {state}" in left and "stop action and MMIO are not restored" in left
    assert f"`gpupass release {shlex.quote(uri)} ml-train` finishes it" in left

    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original            # device mounted and enabled, settings and admin's notes as before
    assert unfinished(uri, "ml-train") == []
    once_more = cli("release", uri, "ml-train", "--yes", "--json")
    assert once_more.returncode == 0 and json.loads(once_more.stdout)["changed"] is False, once_more.stdout
    assert model.to_dict() == original            # the record was consumed once: nothing restored twice


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_stopped_release_of_a_vm_with_a_hostile_name_is_finished_exactly(lab, name):
    model, ep, backend, original = lab(name)
    stop_a_release_half_way(backend, ep, name)
    facts = backend.inventory()
    (left,) = facts.find_vm(name).unfinished
    finishing = make_plan(backend, facts, ReleaseRequest(name), plugins.default_registry())
    (step,) = finishing.steps
    assert S.ps_quote(name) in step.preview
    execute(backend, finishing)
    assert model.to_dict() == original
    assert plan(backend, ReleaseRequest(name)).steps == ()


def test_a_release_given_back_after_a_failure_leaves_no_intent_behind(lab):
    """With gpupass alive, a release failing after its first device gives the devices back (_give_back): the VM holds
    them as before, and the intent is taken out of its record, so `status` has nothing to say."""
    model, ep, backend, _ = lab()
    assigned = model.to_dict()
    ep.inject_fault("Mount-VMHostAssignableDevice")
    with pytest.raises(Exception) as caught:
        execute(backend, plan(backend, ReleaseRequest("ml-train")))
    ep.clear_faults()
    assert getattr(caught.value, "rolled_back", None) is True
    assert model.to_dict() == assigned and "Releasing" not in model.vm("ml-train").notes


def add_to(ep, vm, path):
    """Another admin's own Add-VMAssignableDevice (not gpupass), as PowerShell over WinRM."""
    return Remote(ep, "basic").ps(f"Add-VMAssignableDevice -LocationPath {S.ps_quote(path)} "
                                  f"-VM (Get-VM -Name {S.ps_quote(vm)})")


def test_an_assign_that_takes_the_device_first_keeps_it_and_the_finishing_release_does_the_rest(lab):
    """The device is dismounted and on no VM, so another admin's Add-VMAssignableDevice takes it for cad-ws while
    the finishing release's script waits at the endpoint: Mount-VMHostAssignableDevice would fail for a device a VM
    holds, so the finish leaves it there (and says so), restores ml-train's settings and removes its record."""
    model, ep, backend, original = lab()
    stop_a_release_half_way(backend, ep, "ml-train")
    finishing = plan(backend, ReleaseRequest("ml-train"))
    ep.hold_next_command(containing="Mount-VMHostAssignableDevice")
    import threading

    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(execute(backend, finishing)))
    runner.start()
    try:
        assert ep.command_held.wait(30)
        assert add_to(ep, "cad-ws", A100_2_LOC).status_code == 0      # the other run wins the device
    finally:
        ep.release_command()
        runner.join(60)
    assert outcome and outcome[0].applied
    device = model.device_by_location(A100_2_LOC)
    assert device.assigned_vm == "cad-ws" and device.dismounted              # one owner: cad-ws
    vm, before = model.vm("ml-train"), next(v for v in original["vms"] if v["name"] == "ml-train")
    assert (vm.automatic_stop_action, vm.low_mmio, vm.high_mmio, vm.notes) == (
        before["automatic_stop_action"], before["low_mmio"], before["high_mmio"], before["notes"])
    assert unfinished(backend.target.uri, "ml-train") == []
    assert plan(backend, ReleaseRequest("ml-train")).steps == ()


def test_a_finishing_release_that_runs_first_wins_and_a_late_add_fails_cleanly(lab):
    model, ep, backend, original = lab()
    stop_a_release_half_way(backend, ep, "ml-train")
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert model.to_dict() == original
    late = add_to(ep, "cad-ws", A100_2_LOC)                    # the device is the host's again: not assignable
    assert late.status_code != 0 and b"was not found" in late.std_err
    assert model.to_dict() == original


def test_a_gpupass_assign_racing_the_finishing_release_leaves_one_outcome(lab):
    """`gpupass assign cad-ws` planned while the device is dismounted and on no VM, run against the finishing
    release of ml-train in two processes at once: whichever runs first decides, and each reports what happened."""
    model, ep, backend, original = lab()
    uri = backend.target.uri
    stop_a_release_half_way(backend, ep, "ml-train")
    procs = [subprocess.Popen([*GPUPASS, *args, "--yes", "--json"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for args in (["release", uri, "ml-train"], ["assign", uri, "cad-ws", str(GPU)])]
    (released, r_err), (assigned, a_err) = (p.communicate(120) for p in procs)
    release_code, assign_code = (p.returncode for p in procs)
    assert release_code == 0, released + r_err
    vm, before = model.vm("ml-train"), next(v for v in original["vms"] if v["name"] == "ml-train")
    assert (vm.automatic_stop_action, vm.high_mmio, vm.notes) == (
        before["automatic_stop_action"], before["high_mmio"], before["notes"])   # ml-train finished either way
    device = model.device_by_location(A100_2_LOC)
    owners = {v.name for v in model.vms if any(d.assigned_vm == v.name for d in model.devices
                                               if d.location_path == A100_2_LOC)}
    if assign_code == 0:
        assert owners == {"cad-ws"} and device.dismounted, assigned           # the assign ran after the finish
    else:
        # the assign ran first and failed on the dismounted device: its script undid its own change
        assert json.loads(assigned)["rolled_back"] is True, assigned + a_err
        assert owners == set() and device.enabled and not device.dismounted
        assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == [] and unfinished(uri, "cad-ws") == []


def test_a_stopped_release_of_one_gpu_of_two_is_finished_by_naming_it(lab):
    """ml-train keeps another device: the stopped release's record stays (the settings are still needed), `status`
    names the GPU in the command -- `release HOST VM` alone would take the other device too -- and that command mounts
    and enables the device and takes the intent out of the record, leaving the record as the assign wrote it."""
    from gpupass.backends.hyperv.lab.hostmodel.lab import T4_NO_DRIVER_LOC as T4_LOC

    model, ep, backend, _ = lab()
    t4 = address_map([T4_LOC])[T4_LOC]
    execute(backend, plan(backend, AssignmentRequest("ml-train", (t4,))))
    notes = model.vm("ml-train").notes
    finishing = make_plan(backend, backend.inventory(), ReleaseRequest("ml-train", (GPU,)), plugins.default_registry())
    ep.inject_fault("Mount-VMHostAssignableDevice")
    backend._run_json(finishing.steps[0].preview, "the release a killed client sent")
    ep.clear_faults()
    uri = backend.target.uri
    (left,) = unfinished(uri, "ml-train")
    assert f"`gpupass release {shlex.quote(uri)} ml-train {GPU}` finishes it" in left
    again = cli("release", uri, "ml-train", str(GPU), "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    vm, device = model.vm("ml-train"), model.device_by_location(A100_2_LOC)
    assert device.enabled and not device.dismounted and device.assigned_vm is None
    assert vm.notes == notes and vm.automatic_stop_action == "TurnOff"      # the record and settings still needed
    assert [d.location_path for d in model.devices if d.assigned_vm == "ml-train"] == [T4_LOC]
    assert unfinished(uri, "ml-train") == []
    assert json.loads(cli("release", uri, "ml-train", str(GPU), "--yes", "--json").stdout)["changed"] is False


def test_a_release_stopped_at_its_last_set_vm_is_shown_and_finished(lab):
    """The devices went back to the host whole and the script failed at its last Set-VM (the one that restores the
    settings): ml-train holds no device but keeps TurnOff and guest-controlled cache types, which makes the inventory
    read the records; `status` shows it and the same release again restores the settings and removes the record."""
    model, ep, backend, original = lab()
    stop_a_release_half_way(backend, ep, "ml-train", "Set-VM", nth=2)
    device = model.device_by_location(A100_2_LOC)
    assert device.enabled and not device.dismounted and device.assigned_vm is None
    uri = backend.target.uri
    (left,) = unfinished(uri, "ml-train")
    assert "stop action and MMIO are not restored" in left and f"`gpupass release {shlex.quote(uri)} ml-train`" in left
    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == []
    assert json.loads(cli("release", uri, "ml-train", "--yes", "--json").stdout)["changed"] is False


def test_a_lost_reply_to_the_finishing_release_is_read_back_done_and_a_rerun_converges(lab):
    """The host ran the finishing script and its reply was lost: gpupass reads the host again, finds the release
    finished (nothing of it left on the VM, its device back on the host) and says it is done -- a finishing step has no
    undo, so that is its outcome; `status` has nothing to say and the same release again has nothing to do."""
    model, ep, backend, original = lab()
    stop_a_release_half_way(backend, ep, "ml-train")
    finishing = plan(backend, ReleaseRequest("ml-train"))
    reads = len(ep.scripts)
    ep.drop_next_receive()
    execute(backend, finishing)
    assert any("Get-VMHostAssignableDevice" in s for s in ep.scripts[reads + 1:]), "the host was not read again"
    assert model.to_dict() == original
    assert unfinished(backend.target.uri, "ml-train") == []
    assert plan(backend, ReleaseRequest("ml-train")).steps == ()


def test_a_finishing_release_killed_with_its_script_on_the_wire_leaves_it_finished(lab):
    """A real `gpupass release` process finishing a stopped release, killed (SIGKILL) with its script held at the
    endpoint, which the host then runs: finished exactly, nothing unfinished, the same release again has nothing to
    do."""
    model, ep, backend, original = lab()
    uri = backend.target.uri
    stop_a_release_half_way(backend, ep, "ml-train")
    killed_with_script_held(ep, "Mount-VMHostAssignableDevice", ["release", uri, "ml-train", "--yes"], ENV)
    assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == []
    assert json.loads(cli("release", uri, "ml-train", "--yes", "--json").stdout)["changed"] is False


def stopped_at_the_last_set_vm_by_a_killed_client(model, ep, backend, vm):
    """A real `gpupass release` process killed (SIGKILL) with its script held at the endpoint; the host then runs it
    and fails its second Set-VM (the first writes the intent, the second restores the settings)."""
    killed_with_script_held(ep, "Remove-VMAssignableDevice", ["release", backend.target.uri, vm, "--yes"], ENV,
                            while_held=lambda: model.inject_fault("Set-VM", 2))
    model.clear_faults()


def stopped_at_the_last_set_vm_by_the_script(model, ep, backend, vm):
    stop_a_release_half_way(backend, ep, vm, "Set-VM", nth=2)


@pytest.mark.parametrize("stop", [stopped_at_the_last_set_vm_by_a_killed_client, stopped_at_the_last_set_vm_by_the_script])
def test_a_release_stopped_at_its_last_set_vm_on_a_vm_that_had_turnoff_before_is_shown_and_finished(lab, stop):
    """ml-train had stop action TurnOff and guest-controlled cache types before the assign, so after its release
    stopped at the last Set-VM nothing in its settings tells it from a VM released whole -- only its MMIO and its
    record do. The inventory returns every VM's gpupass record with the VMs (one script: `status` costs what `gpus`
    does), so `status` shows the release, text and --json, with the command that finishes it."""
    model, ep, backend, original = lab(turn_off_before=True)
    uri = backend.target.uri
    before = next(v for v in original["vms"] if v["name"] == "ml-train")
    assert (before["automatic_stop_action"], before["guest_controlled_cache_types"]) == ("TurnOff", True)
    stop(model, ep, backend, "ml-train")
    device, vm = model.device_by_location(A100_2_LOC), model.vm("ml-train")
    assert device.enabled and not device.dismounted and device.assigned_vm is None        # the devices went back
    assert (vm.automatic_stop_action, vm.guest_controlled_cache_types) == ("TurnOff", True)
    assert vm.high_mmio != before["high_mmio"] and '"Releasing":["' in vm.notes            # the settings did not

    command = f"`gpupass release {shlex.quote(uri)} ml-train` finishes it"
    (left,) = unfinished(uri, "ml-train")
    assert "stop action and MMIO are not restored" in left and command in left
    text = cli("status", uri)
    assert text.returncode == 0 and "UNFINISHED" in text.stdout and command in text.stdout, text.stdout + text.stderr
    backend.round_trips = 0
    assert backend.inventory().find_vm("ml-train").unfinished == (left,) and backend.round_trips == 1

    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == []
    assert json.loads(cli("release", uri, "ml-train", "--yes", "--json").stdout)["changed"] is False
    assert model.to_dict() == original


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_release_stopped_at_its_last_set_vm_of_a_vm_with_a_hostile_name_is_shown_and_finished(lab, name):
    model, ep, backend, original = lab(name, turn_off_before=True)
    stopped_at_the_last_set_vm_by_the_script(model, ep, backend, name)
    facts = backend.inventory()
    (left,) = facts.find_vm(name).unfinished
    assert f"`gpupass release {shlex.quote(backend.target.label)} {shlex.quote(name)}` finishes it" in left
    finishing = make_plan(backend, facts, ReleaseRequest(name), plugins.default_registry())
    (step,) = finishing.steps
    assert S.ps_quote(name) in step.preview
    execute(backend, finishing)
    assert model.to_dict() == original
    assert backend.inventory().find_vm(name).unfinished == ()
    assert plan(backend, ReleaseRequest(name)).steps == ()


@pytest.mark.parametrize("failing", ["Mount-VMHostAssignableDevice", "Enable-PnpDevice"])
def test_a_lost_reply_to_a_release_stopped_half_way_is_reported_partial_with_the_powershell_that_finishes_it(lab,
                                                                                                           failing):
    """The release script fails on the host after Remove-VMAssignableDevice (at Mount-VMHostAssignableDevice, or at
    Enable-PnpDevice) and its reply is lost: the device is on no VM but not the host's again. Read back, it is neither
    before nor after (was read as "after" -- a dismounted device on no VM counted as free -- and "undone" by an assign
    script that cannot dismount it again): reported not rolled back, with the exact PowerShell that gives it back and
    `gpupass status`, which shows the stopped release; the same release again finishes it exactly."""
    from gpupass.core.errors import OperationFailed

    model, ep, backend, original = lab()
    uri = backend.target.uri
    release = plan(backend, ReleaseRequest("ml-train"))
    model.inject_fault(failing)
    ep.drop_next_receive()
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, release)
    finally:
        model.clear_faults()
    device = model.device_by_location(A100_2_LOC)
    assert device.assigned_vm is None and not device.enabled
    assert device.dismounted is (failing == "Mount-VMHostAssignableDevice")
    error = caught.value
    assert error.rolled_back is False, error.message
    enable = f"Enable-PnpDevice -InstanceId {S.ps_quote(device.instance_id)} -Confirm:$false"
    by_hand = (f"Mount-VMHostAssignableDevice -LocationPath {S.ps_quote(A100_2_LOC)}; " if device.dismounted else "") + enable
    assert f"{GPU}: {by_hand}" in error.message and f"`gpupass status {backend.target.label}`" in error.message
    (left,) = unfinished(uri, "ml-train")
    assert f"`gpupass release {shlex.quote(uri)} ml-train` finishes it" in left
    assert cli("release", uri, "ml-train", "--yes").returncode == 0
    assert model.to_dict() == original
    assert unfinished(uri, "ml-train") == []
