"""Mediated devices (vGPUs) a stopped run left half-made or half-removed, on libvirt's test driver: `status` shows them
on the VM with the command that finishes or reverts them, `assign` never hands them out as free, and the same command
(or a release) converges. backends/kvm/mdevstate.py says why the VM's definition carries the run's intent.

The lab-kvm host carries a Tesla P40 with three GRID P40-1Q devices, one held by vdi01 and two free
(test_kvm_shares.py). libvirt's test driver cannot define, undefine or start a mediated device and refuses the
listing of stopped ones (both asserted here), so the states a stopped run leaves are made the way the run makes them:
its intent in the VM's definition, with the device on the host or not.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.lab.host import KvmLab
from gpupass.core import paths
from gpupass.core.cli.main import cli
from gpupass.core.domain.request import ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

HOST = "lab-kvm"
P40 = "0000:81:00.0"
FREE = ("6f1d2c8e-5a1b-4e0c-8d1f-7a2b3c4d5e02", "6f1d2c8e-5a1b-4e0c-8d1f-7a2b3c4d5e03")
NOT_ON_HOST = "0b9a6c2e-1111-4222-8333-944455556666"


def run(*args: str, code: int = 0) -> dict:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args and result.stdout.strip() else {}


@pytest.fixture
def lab(open_backend):
    path = KvmLab().path(paths.data_dir())
    KvmLab().target(paths.data_dir())  # created on first use
    return lambda: open_backend(path, persist_test_state=True)


def shares() -> dict[str, dict]:
    gpus = run("gpus", HOST, "--json")["gpus"]
    return {s["id"]: s for s in next(g for g in gpus if g["address"] == P40)["sharing"]["shares"]}


def notes(vm: str) -> list[str]:
    return next(v for v in run("status", HOST, "--json")["vms"] if v["name"] == vm)["unfinished"]


def with_intent(backend, vm: str, uuid: str, removing: bool = False) -> str:
    """VM `vm` as a run stopped after recording its intent leaves it. -> its definition before."""
    before = backend._current_xml(vm)
    intent = domxml.MdevIntent(uuid, "pci_0000_81_00_0", "nvidia-46", P40, removing)
    backend._define(domxml.with_mdev_intent(before, intent).xml, "test: a run stopped after its intent")
    return before


def test_the_test_driver_refuses_the_listing_of_stopped_devices_and_every_listed_one_is_taken_as_started(lab):
    """What _inactive_mdevs reads the flag's support from: the test driver's virCheckFlags accepts only the capability
    flags and answers VIR_ERR_INVALID_ARG (libvirt 9.0.0 src/test/test_driver.c line 7486)."""
    backend = lab()
    conn = backend._connection()
    with pytest.raises(libvirt.libvirtError) as refused:
        conn._wrapped.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV
                                     | libvirt.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE)
    assert refused.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    gpu = backend.inventory().gpus_at(domxml.PciAddress.parse(P40))[0]
    assert backend._inactive_listing is False
    assert [s.id for s in gpu.sharing.free("nvidia-46")] == list(FREE)  # no device made unusable by the refusal
    assert not any(s.unfinished for s in gpu.sharing.shares)


def test_a_device_a_stopped_assign_was_creating_is_shown_never_free_and_the_same_assign_finishes_it(lab):
    """A run killed after defining its device (recorded in the VM first): the device is on the host, given to no VM.
    `gpus` says it is not free and why, `status` shows it on the VM with both commands, another VM's assign takes the
    other free device, and the same assign gives the VM the device and takes the intent out."""
    before = with_intent(lab(), "render01", FREE[0])
    listed = shares()
    assert listed[FREE[0]]["holder"] is None and "being created for VM 'render01'" in listed[FREE[0]]["unfinished"]
    assert "unfinished" not in listed[FREE[1]]
    (note,) = notes("render01")
    assert f"it was creating mediated device {FREE[0]}" in note and "which is on the host" in note, note
    assert f"`gpupass assign HOST render01 {P40} --share nvidia-46` finishes it" in note
    assert f"`gpupass release HOST render01 {P40}` removes it" in note
    assert f"not free: {FREE[0]}: being created for VM 'render01'" in CliRunner().invoke(cli, ["gpus", HOST]).output
    text = CliRunner().invoke(cli, ["status", HOST]).output
    assert "UNFINISHED" in text and f"render01: an assign of a nvidia-46 vGPU of GPU {P40}" in text, text

    run("assign", HOST, "ml-train", P40, "--share", "P40-1Q", "--yes")
    assert shares()[FREE[1]]["holder"] == "ml-train" and shares()[FREE[0]]["holder"] is None

    plan = run("plan", HOST, "render01", P40, "--share", "P40-1Q", "--json")
    assert [s["action"] for s in plan["steps"]] == ["kvm.create-mdev", "kvm.define-domain"]
    assert FREE[0] in plan["steps"][1]["description"]
    run("assign", HOST, "render01", P40, "--share", "P40-1Q", "--yes")
    after = lab()._current_xml("render01")
    assert domxml.read_facts(after).mdevs == (FREE[0],) and domxml.mdev_intents(domxml.parse(after)) == ()
    assert domxml.mdevs_created_by_gpupass(domxml.parse(after)) == (FREE[0],)  # a release removes what gpupass made
    assert shares()[FREE[0]]["holder"] == "render01" and notes("render01") == []
    assert domxml.read_facts(before).mdevs == ()


def test_an_intent_whose_device_never_reached_the_host_is_shown_and_a_release_clears_it_exactly(lab):
    backend = lab()
    before = with_intent(backend, "render01", NOT_ON_HOST)
    (note,) = notes("render01")
    assert f"mediated device {NOT_ON_HOST}" in note and "which is not on the host" in note, note
    released = run("release", HOST, "render01", P40, "--yes", "--json")
    assert released["changed"] and [s["action"] for s in released["plan"]["steps"] if s["writes"]] == \
        ["kvm.clear-mdev-intent"]
    assert lab()._current_xml("render01") == before and notes("render01") == []
    assert run("release", HOST, "render01", P40, "--yes", "--json")["changed"] is False


def test_a_removal_left_stopped_keeps_the_release_recorded_shows_it_and_never_frees_the_device(lab, registry):
    """The second window: a release's removal stops the device (virNodeDeviceDestroy, which the test driver answers
    with success) and can neither undefine it nor start it again (VIR_ERR_NO_SUPPORT: neither is in the test driver's
    table). The release is reported not rolled back; the VM gets the device back with the removal recorded, so `status`
    shows it with the command that finishes it and `gpus` never lists it as free."""
    backend = lab()
    backend._define(domxml.add_mdev(backend._current_xml("render01"), FREE[1], created=True).xml, "test: gpupass's")
    plan = make_plan(backend, backend.inventory(), ReleaseRequest("render01", ()), registry)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is False and "it is defined and stopped" in caught.value.message
    root = domxml.parse(lab()._current_xml("render01"))
    assert domxml.read_facts(domxml.serialize(root)).mdevs == (FREE[1],)
    assert [(i.uuid, i.removing) for i in domxml.mdev_intents(root)] == [(FREE[1], True)]
    listed = shares()
    assert listed[FREE[1]]["holder"] == "render01" and "being removed by a gpupass release of VM 'render01'" in \
        listed[FREE[1]]["unfinished"]
    (note,) = notes("render01")
    assert f"it was removing mediated device {FREE[1]}" in note and f"`gpupass release HOST render01 {P40}` " \
        "finishes it" in note, note
    # another VM's assign takes the free device, never this one
    run("assign", HOST, "ml-train", P40, "--share", "P40-1Q", "--yes")
    assert shares()[FREE[0]]["holder"] == "ml-train"
    # the release again plans the same removal (the intent it wrote is not planned twice), and meets the same refusal
    again = make_plan(backend, backend.inventory(), ReleaseRequest("render01", ()), registry)
    assert [s.action for s in again.steps] == ["kvm.define-domain", "kvm.remove-mdev", "kvm.clear-mdev-intent"]
    with pytest.raises(OperationFailed):
        execute(backend, again)
    assert [i.uuid for i in domxml.mdev_intents(domxml.parse(lab()._current_xml("render01")))] == [FREE[1]]


@pytest.mark.parametrize("holds", ["a-share", "a-whole-gpu"])
def test_a_release_of_what_the_vm_holds_takes_a_stopped_runs_record_out_last(lab, holds):
    """A VM holding a free device of the card (or a GPU whole) and a record a stopped assign left: the release gives
    the device (or the GPU) back and then takes the record out; each record's define checks the VM is as the release's
    own define left it (gpupass's records apart): nothing refused as changed by someone else."""
    run("assign", HOST, "ml-train", *((P40, "--share", "P40-1Q") if holds == "a-share" else ("42:00.0",)), "--yes")
    with_intent(lab(), "ml-train", NOT_ON_HOST)
    released = run("release", HOST, "ml-train", "--yes", "--json")
    assert [s["action"] for s in released["plan"]["steps"] if s["writes"]][-1] == "kvm.clear-mdev-intent"
    after = lab()._current_xml("ml-train")
    assert domxml.mdev_intents(domxml.parse(after)) == () and notes("ml-train") == []
    assert domxml.read_facts(after).mdevs == () and domxml.read_facts(after).hostdevs == ()


def test_the_undo_of_a_record_keeps_it_while_its_device_is_on_the_host_given_to_no_vm(lab):
    """The record's undo (after the device's creation failed or was undone) takes it out only where the device is not
    on the host; a device on the host that the VM holds by then was finished by the same assign run at the same time
    (nothing to undo); one given to no VM keeps its record, which the error says, so status still names it."""
    run("assign", HOST, "render01", P40, "--share", "P40-1Q", "--yes")  # render01 holds FREE[0]
    backend = lab()
    held = backend._current_xml("render01")
    finished = backend._intent_step("render01", held, domxml.MdevIntent(FREE[0], "pci_0000_81_00_0", "nvidia-46", P40),
                                    writes=True)
    backend.undo(finished, held)
    assert lab()._current_xml("render01") == held
    with_intent(backend, "render01", FREE[1])
    left = backend._current_xml("render01")
    kept = backend._intent_step("render01", held, domxml.MdevIntent(FREE[1], "pci_0000_81_00_0", "nvidia-46", P40),
                                writes=True)
    with pytest.raises(OperationFailed) as error:
        backend.undo(kept, held)
    assert f"mediated device {FREE[1]} is still on the host" in error.value.message and "stays" in error.value.message
    assert lab()._current_xml("render01") == left
