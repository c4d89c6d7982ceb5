"""A release's intent left in a VM's restore record with nothing of the release to give back (records._intent_left):
what `status` says of it and what a release or an assign does about it (HypervState's ex_finish)."""
from __future__ import annotations

import json

from gpupass.backends.hyperv.records import stopped_runs
from gpupass.backends.hyperv.scripts import RECORD_END
from gpupass.core.domain.pci import PciAddress

VM_ID = "6f1c1a52-3f0e-4d5e-9a51-0c8e6b7d1a01"
A, B = "PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)", "PCIROOT(0)#PCI(0100)#PCI(0000)"
ADDRESSES = {A: PciAddress.parse("0040:a4:00.0"), B: PciAddress.parse("0000:01:00.0")}


def vm(devices: list[str], releasing: list[str]) -> dict[str, object]:
    record = {"VMId": VM_ID, "StopAction": "ShutDown", "LowMmio": 134217728, "HighMmio": 536870912,
              "GuestCache": False, "Releasing": releasing}
    return {"Name": "ml-train", "Id": VM_ID, "Devices": devices, "Record": json.dumps(record) + RECORD_END}


def test_an_intent_whose_devices_the_vm_still_holds_names_the_release_and_the_assign_that_clear_it():
    (left,) = stopped_runs([vm([A], [A])], [], ADDRESSES, "hv").values()
    assert left.intent_only and not left.paths and not left.restore
    assert "it still holds 0040:a4:00.0" in left.note
    assert "`gpupass release hv ml-train 0040:a4:00.0` (the same release again)" in left.note
    assert "`gpupass assign hv ml-train 0040:a4:00.0` keeps it on the VM" in left.note
    assert left.as_state() == {"paths": [], "restore": False, "candidates": [], "intent_only": True, "note": left.note}


def test_an_intent_whose_device_went_while_the_vm_keeps_another_names_the_release_that_takes_it_out():
    (left,) = stopped_runs([vm([B], [A])], [], ADDRESSES, "hv").values()
    assert "0040:a4:00.0 is on no VM of it any more" in left.note and "`gpupass release hv ml-train 0040:a4:00.0` takes " \
        "the intent out" in left.note


def test_a_record_without_an_intent_on_a_vm_with_devices_is_nothing_unfinished():
    raw = vm([A], [])
    raw["Record"] = raw["Record"].replace(',"Releasing": []', "").replace(', "Releasing": []', "")
    assert "Releasing" not in str(raw["Record"]) and stopped_runs([raw], [], ADDRESSES, "hv") == {}
