"""Inventory, assign, release and rollback, sent by real pywinrm (Basic and NTLM) to the modelled host."""
from __future__ import annotations

import json

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.lab.hostmodel import HostModel
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_1_LOC, A100_2_LOC, MI300X_LOC, T4_LOC, T4_NO_DRIVER_LOC
from hyperv_helpers import G, M

PREV = S.VmSettings("Save", 128 * M, 512 * M, False)


def inventory(remote) -> dict:
    code, data = remote.ps_json(S.inventory_script())
    assert code == 0
    return data


def gpus_of(inv: dict) -> list[dict]:
    """The GPUs among the PCI functions the inventory lists (class code 03 or 12; the backend groups the rest)."""
    return [f for f in inv["Functions"] if f["ClassCode"][:2] in S.GPU_BASE_CLASSES]


def test_inventory_of_the_lab(remote):
    inv = inventory(remote)
    assert inv["Host"] == {"Name": "HV-LAB01", "IovSupport": True, "IovSupportReasons": None}
    assert inv["Partitionable"] == []       # the lab's GPUs offer no GPU partitioning
    gpus = {g["LocationPath"]: g for g in gpus_of(inv)}
    assert set(gpus) == {f["LocationPath"] for f in inv["Functions"]} == {A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC}
    a1, a2, t4 = gpus[A100_1_LOC], gpus[A100_2_LOC], gpus[T4_LOC]
    # found by class code, not PnP class: no host driver, so no Class and Status Error (as on real hosts)
    bare, mi = gpus[T4_NO_DRIVER_LOC], gpus[MI300X_LOC]
    assert (bare["Class"], bare["Status"], bare["Name"], bare["ClassCode"]) == (None, "Error", "3D Video Controller",
                                                                              "030200")
    assert (mi["Class"], mi["ClassCode"]) == (None, "120000")
    assert (a1["Dismounted"], a1["Owner"], a1["Present"], a1["Mem"]) == (True, "cad-ws", False, [])
    assert (a2["Dismounted"], a2["Owner"], a2["Status"]) == (False, None, "OK")
    # the memory ranges it holds, [start, end, ...]: the 32-bit BAR0 below 4 GiB, the 64-bit BARs above
    starts, ends = a2["Mem"][0::2], a2["Mem"][1::2]
    assert [e - s + 1 for s, e in zip(starts, ends, strict=True)] == [16 * M, 128 * G, 32 * M]
    assert ends[0] < 4 * G <= starts[1] and starts[2] >= 4 * G
    assert all(s % (e - s + 1) == 0 for s, e in zip(starts, ends, strict=True))      # each aligned to its size
    assert a2["InstanceId"].startswith("PCI\\VEN_10DE&DEV_20B5")
    assert (a2["Interrupts"] & 6, a2["Rmrr"], a2["Acs"], a2["DeviceType"]) == (6, False, 3, 2)
    assert t4["Rmrr"] is True and sum(e - s + 1 for s, e in zip(t4["Mem"][0::2], t4["Mem"][1::2], strict=True)) == 304 * M
    vms = {v["Name"]: v for v in inv["Vms"]}
    assert list(vms) == ["ml-train", "render01", "web01", "cad-ws", "dyn-mem"]
    assert vms["ml-train"] | {"Id": None} == {
        "Name": "ml-train", "Id": None, "Generation": 2, "State": "Off", "MemoryStartup": 64 * G,
        "DynamicMemory": False, "StopAction": "Save", "LowMmio": 128 * M, "HighMmio": 512 * M,
        "GuestCache": False, "Checkpoints": [], "Devices": [], "Partitions": [], "Record": None, "Intent": None}
    assert vms["render01"]["Generation"] == 1
    assert vms["web01"]["State"] == "Running"
    assert vms["cad-ws"]["Devices"] == [A100_1_LOC] and vms["cad-ws"]["StopAction"] == "TurnOff"
    assert vms["dyn-mem"]["DynamicMemory"] is True


def test_inventory_companions_and_checkpoints(rtx_remote):
    from gpupass.backends.hyperv.lab.hostmodel import Checkpoint
    rtx_remote.model.vm("render01").checkpoints.append(Checkpoint("before-driver", "Standard"))
    inv = inventory(rtx_remote)
    rtx = next(g for g in gpus_of(inv) if "RTX 4090" in g["Name"])
    (audio,) = [f for f in inv["Functions"] if f["Slot"] == rtx["Slot"] and f is not rtx]   # its companion
    assert (audio["Name"], audio["LocationPath"], audio["Class"]) == (
        "NVIDIA High Definition Audio", "PCIROOT(0)#PCI(0100)#PCI(0001)", "Media")
    render = next(v for v in inv["Vms"] if v["Name"] == "render01")
    assert render["Checkpoints"] == [{"Name": "before-driver", "Type": "Standard"}]


def test_inventory_ghost_device(auth, endpoint_factory):
    from gpupass.backends.hyperv.lab.hostmodel import PnpDevice, lab_host
    from hyperv_helpers import Remote
    m = lab_host()
    m.devices.append(PnpDevice("PCI\\VEN_10DE&DEV_1DB4&SUBSYS_121410DE&REV_A1\\4&11111111&0&0018", "NVIDIA Tesla V100",
                               "Display", "PCIROOT(80)#PCI(0300)#PCI(0000)", 0x10DE, 0x1DB4, [16 * M, 16 * G, 32 * M],
                               present=False))
    inv = inventory(Remote(endpoint_factory(m, auth), auth))
    ghost = next(g for g in gpus_of(inv) if "V100" in g["Name"])
    assert (ghost["Present"], ghost["Dismounted"], ghost["Status"], ghost["Mem"]) == (False, False, "Unknown", [])
    r = Remote(endpoint_factory(m, "basic"), "basic").ps(S.assign_script("ml-train", [ghost["LocationPath"]], 1, 1))
    assert r.status_code == 1


def test_inventory_on_a_host_without_gpus(auth, endpoint_factory):
    from hyperv_helpers import Remote
    m = HostModel(name="EMPTY", iov_support=False, iov_support_reasons=["Firmware does not support IOMMU"])
    inv = inventory(Remote(endpoint_factory(m, auth), auth))
    assert inv == {"Host": {"Name": "EMPTY", "IovSupport": False,
                            "IovSupportReasons": ["Firmware does not support IOMMU"]}, "Functions": [], "Vms": [],
                   "Partitionable": [], "Os": {"Caption": m.os_caption, "BuildNumber": m.os_build, "ProductType": 3}}


def test_assign_then_release(remote):
    code, res = remote.ps_json(S.assign_script("ml-train", [A100_2_LOC], 3 * G, (128 * 1024 + 48 + 512) * M))
    assert code == 0 and res == {"ok": True, "previous": {"VMId": "6f1c1a52-3f0e-4d5e-9a51-0c8e6b7d1a01",
                                                          "StopAction": "Save", "LowMmio": 128 * M,
                                                          "HighMmio": 512 * M, "GuestCache": False}}
    inv = inventory(remote)
    a2 = next(g for g in gpus_of(inv) if g["LocationPath"] == A100_2_LOC)
    assert (a2["Owner"], a2["Dismounted"], a2["Present"]) == ("ml-train", True, False)
    vm = next(v for v in inv["Vms"] if v["Name"] == "ml-train")
    assert (vm["StopAction"], vm["LowMmio"], vm["HighMmio"], vm["GuestCache"], vm["Devices"]) == \
        ("TurnOff", 3 * G, (128 * 1024 + 48 + 512) * M, True, [A100_2_LOC])
    # The settings from before travel in the VM's notes, written by the same Set-VM
    assert remote.model.vm("ml-train").notes == S.RECORD_BEGIN + json.dumps(res["previous"], separators=(",", ":")) \
        + S.RECORD_END

    code, rel = remote.ps_json(S.release_script("ml-train", [A100_2_LOC]))
    assert code == 0 and rel["ok"] is True and rel["released"] == [A100_2_LOC] and rel["restored"] == "notes"
    fresh = HostModel.from_json(remote.model.to_json())
    from gpupass.backends.hyperv.lab.hostmodel import lab_host
    assert fresh.to_json() == lab_host().to_json()     # back exactly to where it started


def test_assign_several_devices(rtx_remote):
    m = rtx_remote.model
    paths = ["PCIROOT(0)#PCI(0100)#PCI(0000)", "PCIROOT(0)#PCI(0100)#PCI(0001)", A100_2_LOC]
    code, res = rtx_remote.ps_json(S.assign_script("ml-train", paths, 3 * G, 200 * G))
    assert code == 0 and res["ok"]
    assert [m.device_by_location(p).assigned_vm for p in paths] == ["ml-train"] * 3
    code, rel = rtx_remote.ps_json(S.release_script("ml-train", paths))
    assert code == 0 and rel["released"] == paths
    assert all((d.assigned_vm, d.dismounted, d.enabled) == (None, False, True)
               for d in m.devices if d.location_path in paths)


@pytest.mark.parametrize("vm,path,expect", [
    ("web01", A100_2_LOC, "current state"),              # running VM: Set-VM refuses
    ("dyn-mem", A100_2_LOC, "dynamic memory"),           # fails at Add-VMAssignableDevice
    ("render01", T4_LOC, "RMRR"),                        # fails at Dismount
    ("ml-train", A100_1_LOC, "No matching Win32_PnPEntity"),  # already held by cad-ws: not on the host
    ("no-such-vm", A100_2_LOC, "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"),  # Get-VM's own
    ("*", A100_2_LOC, "0 VMs named *"),          # a wildcard is not a VM name
])
def test_assign_failures_leave_the_host_as_it_was(remote, vm, path, expect):
    before = remote.model.to_json()
    r = remote.ps(S.assign_script(vm, [path], 3 * G, 33280 * M))
    assert r.status_code == 1
    assert expect in (r.std_out + r.std_err).decode("utf-8").replace("\\u0027", "'")
    assert remote.model.to_json() == before


ASSIGN_STEPS = [("Get-PnpDevice", 1), ("Get-PnpDeviceProperty", 1), ("Set-VM", 1),
                ("Disable-PnpDevice", 1), ("Dismount-VMHostAssignableDevice", 1), ("Add-VMAssignableDevice", 1),
                ("Disable-PnpDevice", 2), ("Dismount-VMHostAssignableDevice", 2), ("Add-VMAssignableDevice", 2),
                ("Disable-PnpDevice", 3), ("Dismount-VMHostAssignableDevice", 3), ("Add-VMAssignableDevice", 3)]


@pytest.mark.parametrize("cmdlet,nth", ASSIGN_STEPS)
def test_rollback_at_every_step(rtx_remote, cmdlet, nth):
    """Fail each step of a three-device assign; the host must end exactly as it started."""
    m = rtx_remote.model
    paths = ["PCIROOT(0)#PCI(0100)#PCI(0000)", "PCIROOT(0)#PCI(0100)#PCI(0001)", A100_2_LOC]
    before = m.to_json()
    rtx_remote.endpoint.inject_fault(cmdlet, nth=nth, message=f"injected {cmdlet} #{nth}")
    code, res = rtx_remote.ps_json(S.assign_script("ml-train", paths, 3 * G, 200 * G))
    assert code == 1
    assert res["ok"] is False and res["error"] == f"injected {cmdlet} #{nth}"
    assert res["undoErrors"] == []
    assert not m.faults, "the fault was not reached"
    assert m.to_json() == before
    for p in paths:
        d = m.device_by_location(p)
        assert (d.dismounted, d.enabled, d.assigned_vm) == (False, True, None)
    vm = m.vm("ml-train")
    assert (vm.automatic_stop_action, vm.low_mmio, vm.high_mmio, vm.guest_controlled_cache_types) == \
        ("Save", 128 * M, 512 * M, False)


def test_rollback_reports_undo_failures(rtx_remote):
    m = rtx_remote.model
    paths = ["PCIROOT(0)#PCI(0100)#PCI(0000)", "PCIROOT(0)#PCI(0100)#PCI(0001)"]
    rtx_remote.endpoint.inject_fault("Add-VMAssignableDevice", nth=2)
    rtx_remote.endpoint.inject_fault("Mount-VMHostAssignableDevice", nth=1, message="mount broke")
    code, res = rtx_remote.ps_json(S.assign_script("ml-train", paths, 3 * G, 40 * G))
    assert code == 1 and res["ok"] is False
    assert res["undoErrors"] == [f"{paths[0]}: mount broke"]
    # the first device could not be mounted back: it is left dismounted (and said so); the second is back
    d0, d1 = (m.device_by_location(p) for p in paths)
    assert (d0.dismounted, d0.assigned_vm) == (True, None)
    assert (d1.dismounted, d1.enabled) == (False, True)
    assert m.vm("ml-train").automatic_stop_action == "Save"


def test_release_stops_at_first_failure(remote):
    m = remote.model
    remote.endpoint.inject_fault("Mount-VMHostAssignableDevice", message="mount broke")
    code, res = remote.ps_json(S.release_script("cad-ws", [A100_1_LOC], PREV))
    assert code == 1 and res["ok"] is False and res["stage"] == {A100_1_LOC: "removed"}
    assert res["step"] == f"Mount-VMHostAssignableDevice {A100_1_LOC}"
    assert m.vm("cad-ws").automatic_stop_action == "TurnOff"    # settings not restored while a device is out
    d = m.device_by_location(A100_1_LOC)
    assert (d.assigned_vm, d.dismounted) == (None, True)


def test_model_state_survives_restart(remote, endpoint_factory, auth, tmp_path):
    remote.ps_json(S.assign_script("ml-train", [A100_2_LOC], 3 * G, 33280 * M))
    saved = tmp_path / "lab.json"
    saved.write_text(remote.model.to_json())
    remote.endpoint.stop()
    from hyperv_helpers import Remote
    again = Remote(endpoint_factory(HostModel.from_json(saved.read_text()), auth), auth)
    inv = inventory(again)
    assert next(g for g in gpus_of(inv) if g["LocationPath"] == A100_2_LOC)["Owner"] == "ml-train"
    json.dumps(inv)
