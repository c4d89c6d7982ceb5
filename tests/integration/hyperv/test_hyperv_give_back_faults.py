"""Faults on the Hyper-V release's take-back (HypervBackend._give_back; issue 10's fault matrix).

A release whose script fails on the host after Remove-VMAssignableDevice (here: the host refuses its
Mount-VMHostAssignableDevice) leaves the device dismounted and on no VM; gpupass gives it back to the VM
(Add-VMAssignableDevice, scripts.readd_script) and then takes the release's intent out of the VM's restore record
(scripts.drop_intent_script). Each of those two writes here loses its reply after the host ran it, or its client is
killed (SIGKILL) with it held at the endpoint, which the host then runs. The device ends on the VM with its settings
and record as the assign left them; `status` has nothing to say; the same release again releases exactly.
"""
from __future__ import annotations

import json
import os
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
from hyperv_helpers import PASSWORD, USER
from support.cli import GPUPASS, killed_with_script_held

GPU = address_map([A100_2_LOC])[A100_2_LOC]
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}
# what tells each take-back script from the others sent in the release (the release script itself has neither)
READD = "Add-VMAssignableDevice -LocationPath"
DROP_INTENT = "$i2=$gj.IndexOf("


def cli(*args):
    return subprocess.run([*GPUPASS, *args], env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


@pytest.fixture
def lab(endpoint_factory):
    model = lab_host()
    original = model.to_dict()
    ep = endpoint_factory(model, "basic")
    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic",
                                   password=Secret(PASSWORD)))
    execute(backend, plan(backend, AssignmentRequest("ml-train", (GPU,))))
    return model, ep, backend, original


def settings_and_record(model):
    """The VM's settings, its notes before the record, and the record's JSON without a release's intent (a stale
    intent on a VM that holds its devices again names nothing to give back: `status` shows it, and the next release
    takes it out first and removes the whole record once the VM holds no device)."""
    vm = model.vm("ml-train")
    before, _, rest = vm.notes.partition(S.RECORD_BEGIN)
    record = json.loads(rest.split(S.RECORD_END, 1)[0])
    record.pop("Releasing", None)
    return (vm.automatic_stop_action, vm.low_mmio, vm.high_mmio, vm.guest_controlled_cache_types, before, record)


def assert_given_back_and_a_release_converges(model, backend, assigned, intent_left=False):
    """`intent_left`: the take-back stopped before the intent's removal (its client killed after the re-add), so the
    record still names the release, which `status` shows with what clears it (records._intent_left)."""
    device = model.device_by_location(A100_2_LOC)
    assert device.assigned_vm == "ml-train" and device.dismounted and not device.enabled
    assert settings_and_record(model) == assigned
    status = cli("status", backend.target.uri, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    notes = {v["name"]: v["unfinished"] for v in json.loads(status.stdout)["vms"]}
    if intent_left:
        (note,) = notes.pop("ml-train")
        assert "stopped with nothing of it to give back" in note and f"it still holds {GPU}" in note, note
    assert all(unfinished == [] for unfinished in notes.values()), status.stdout


def release_again_is_exact(model, backend, original):
    again = cli("release", backend.target.uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is True, again.stdout + again.stderr
    assert model.to_dict() == original


@pytest.mark.parametrize("lost", [READD, DROP_INTENT])
def test_a_lost_reply_on_the_take_back_is_read_back_as_given_back(lab, lost):
    model, ep, backend, original = lab
    assigned = settings_and_record(model)
    releasing = plan(backend, ReleaseRequest("ml-train"))
    sent = backend._run_ps

    def losing_its_reply(script, action):
        if lost in script:
            ep.drop_next_receive()
        return sent(script, action)

    backend._run_ps = losing_its_reply
    ep.inject_fault("Mount-VMHostAssignableDevice")
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, releasing)
    finally:
        ep.clear_faults()
        del backend._run_ps
    assert caught.value.rolled_back is True, caught.value.message           # read back: the VM holds it again
    assert_given_back_and_a_release_converges(model, backend, assigned)
    if lost == DROP_INTENT:
        assert "Releasing" not in model.vm("ml-train").notes
    release_again_is_exact(model, backend, original)


@pytest.mark.parametrize("held", [READD, DROP_INTENT])
def test_a_client_killed_with_the_take_back_on_the_wire_leaves_the_device_on_the_vm(lab, held):
    model, ep, backend, original = lab
    assigned = settings_and_record(model)
    ep.inject_fault("Mount-VMHostAssignableDevice")
    try:
        killed_with_script_held(ep, held, ["release", backend.target.uri, "ml-train", "--yes"], ENV)
    finally:
        ep.clear_faults()
    assert_given_back_and_a_release_converges(model, backend, assigned, intent_left=held == READD)
    release_again_is_exact(model, backend, original)


def test_a_stale_intent_does_not_stop_the_next_release_from_being_shown_and_finished(lab):
    """A release that failed before it took the device, and whose intent's removal failed too, leaves its intent in the
    record (the device still on the VM). The next release script, run as planned but stopped half-way by a killed
    client (its plan's first step, which takes the stale intent out, never sent), appends its own intent after it (the
    release script has no room to cut the old one out: scripts.MAX_SCRIPT_CHARS with a 64-character name), so the
    record holds two "Releasing" keys; Windows PowerShell 5.1's ConvertFrom-Json reads the last of two equal keys
    (PowerShell/PowerShell#1567), as Python's json does, and the intent's removal cuts at the first: stopped half-way,
    that release is shown with its own devices and finished exactly."""
    from hyperv_helpers import stop_a_release_half_way

    model, ep, backend, original = lab
    releasing = plan(backend, ReleaseRequest("ml-train"))
    ep.inject_fault("Remove-VMAssignableDevice")
    ep.inject_fault("Set-VM", 2)      # the intent's removal after it (the first Set-VM wrote the intent)
    try:
        with pytest.raises(OperationFailed):
            execute(backend, releasing)
    finally:
        ep.clear_faults()
    assert model.vm("ml-train").notes.count('"Releasing":') == 1                # the stale intent
    stop_a_release_half_way(backend, ep, "ml-train")
    assert model.vm("ml-train").notes.count('"Releasing":') == 2
    (left,) = backend.inventory().find_vm("ml-train").unfinished
    assert f"{GPU} is dismounted from the host and on no VM" in left
    release_again_is_exact(model, backend, original)
