"""A release script that fails before it takes any device writes its intent first (the devices it takes back, in the
VM's restore record) and takes it out again at best effort. Where that removal fails too, the intent stays on a VM that
still holds every device: gpupass does not say "nothing was changed" -- it reads the host again and reports what is
there (scripts.release_script's intentLeft; records._intent_left); `status` shows the intent with the commands that
clear it: the same release again (which releases the devices and takes it out: a release drops an intent an earlier
one left before it writes its own), or an assign of the devices the VM holds (which keeps them and takes the intent out
alone). Real pywinrm against the lab endpoint, whose host model fails the cmdlets (HostModel.inject_fault)."""
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
from hyperv_helpers import PASSWORD, USER, rtx_host
from support.cli import GPUPASS

A100 = address_map([A100_2_LOC])[A100_2_LOC]
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


def unfinished(uri, vm="ml-train"):
    status = subprocess.run([*GPUPASS, "status", uri, "--json"], env=ENV, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert status.returncode == 0, status.stdout + status.stderr
    return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == vm)["unfinished"]


@pytest.fixture
def lab(endpoint_factory):
    def start(model=None, gpus=(A100,)):
        model = model or lab_host()
        model.vm("ml-train").notes = "owner: ml team"
        original = model.to_dict()
        ep = endpoint_factory(model, "basic")
        backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv",
                                       password=Secret(PASSWORD)))
        if gpus:
            execute(backend, plan(backend, AssignmentRequest("ml-train", tuple(gpus))))
        return model, ep, backend, original
    return start


def failing_before_any_device_with_its_intent_left(ep, backend, request):
    """The release planned, then run with Remove-VMAssignableDevice failing and the Set-VM after it (the intent's
    removal; the first Set-VM wrote the intent) failing too."""
    release = plan(backend, request)
    ep.inject_fault("Remove-VMAssignableDevice")
    ep.inject_fault("Set-VM", 2)
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, release)
    finally:
        ep.clear_faults()
    return caught.value


def test_the_intent_left_is_reported_as_read_back_and_the_same_release_again_clears_it(lab):
    model, ep, backend, original = lab()
    error = failing_before_any_device_with_its_intent_left(ep, backend, ReleaseRequest("ml-train"))
    # what is there, read back: the VM holds its device, and its record names a release -- never "as it was"
    assert error.rolled_back is False, error.message
    assert "the VM is as it was" not in error.message
    assert f"VM 'ml-train' holds {A100} of {A100}" in error.message
    assert "stopped with nothing of it to give back" in error.message
    notes = model.vm("ml-train").notes
    assert '"Releasing":' in notes and A100 in backend.inventory().find_vm("ml-train").assigned
    (note,) = unfinished(backend.target.uri)
    assert f"it still holds {A100}" in note
    release, assign = note.split("`gpupass release ")[1], note.split("`gpupass assign ")[1]
    assert release.split("`")[0].endswith(f" ml-train {A100}") and "(the same release again)" in release
    assert assign.split("`")[0].endswith(f" ml-train {A100}") and "keeps it on the VM" in assign
    # the same release again: released, the stale intent not doubled, the record gone with it
    execute(backend, plan(backend, ReleaseRequest("ml-train", (A100,))))
    assert model.to_dict() == original
    assert unfinished(backend.target.uri) == []


def test_an_assign_of_the_devices_the_vm_holds_keeps_them_and_takes_the_intent_out_alone(lab):
    model, ep, backend, original = lab()
    assigned = model.to_dict()
    failing_before_any_device_with_its_intent_left(ep, backend, ReleaseRequest("ml-train"))
    keep = plan(backend, AssignmentRequest("ml-train", (A100,)))
    (step,) = keep.steps
    assert "take the intent of a release of VM 'ml-train' that left nothing to give back" in step.description
    execute(backend, keep)
    assert model.to_dict() == assigned                                  # exactly as after the assign
    assert unfinished(backend.target.uri) == []
    assert plan(backend, AssignmentRequest("ml-train", (A100,))).steps == ()


def test_a_vm_keeping_another_device_is_released_of_the_one_named_and_keeps_its_record_without_the_intent(lab):
    model, ep, backend, original = lab(rtx_host(), gpus=())
    facts = backend.inventory()
    rtx = next(g for g in facts.gpus if "4090" in g.function.name)
    execute(backend, plan(backend, AssignmentRequest("ml-train", (rtx.address, A100))))
    both = model.to_dict()
    failing_before_any_device_with_its_intent_left(ep, backend, ReleaseRequest("ml-train", (A100,)))
    (note,) = unfinished(backend.target.uri)
    assert f"it still holds {A100}" in note
    execute(backend, plan(backend, ReleaseRequest("ml-train", (A100,))))
    vm = backend.inventory().find_vm("ml-train")
    assert A100 not in vm.assigned and rtx.address in vm.assigned
    # the record as the assign wrote it, without any intent: the next release restores from it
    assert model.vm("ml-train").notes == next(v for v in both["vms"] if v["name"] == "ml-train")["notes"]
    assert '"Releasing"' not in model.vm("ml-train").notes and unfinished(backend.target.uri) == []
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert S.RECORD_BEGIN not in model.vm("ml-train").notes


def test_with_the_intents_removal_working_a_release_failing_before_any_device_is_still_as_it_was(lab):
    """The other branch, unchanged: the intent taken out again, the host exactly as before the release: rolled back."""
    model, ep, backend, original = lab()
    assigned = model.to_dict()
    release = plan(backend, ReleaseRequest("ml-train"))
    ep.inject_fault("Remove-VMAssignableDevice")
    with pytest.raises(OperationFailed) as caught:
        execute(backend, release)
    ep.clear_faults()
    assert caught.value.rolled_back is True and model.to_dict() == assigned
