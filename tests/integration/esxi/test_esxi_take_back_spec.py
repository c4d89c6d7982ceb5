"""The inverse ConfigSpec a take-back sends (backends/esxi/backend.py, _written and _inverse), built from pyVmomi's own
data objects: only what the run's reconfigure wrote is set back, only where the VM still holds it, and a device the VM
holds already is never added again."""

from __future__ import annotations

import pytest

pytest.importorskip("pyVmomi")

from pyVmomi import vim  # noqa: E402

from gpupass.backends.esxi.backend import _inverse, _written  # noqa: E402

PT = vim.vm.device.VirtualPCIPassthrough
OP = vim.vm.device.VirtualDeviceSpec.Operation


def device(key, address):
    return PT(key=key, backing=PT.DeviceBackingInfo(id=address, deviceId="20b5", systemId="s", vendorId=0x10de,
                                                   deviceName="A100"))


def config(devices=(), extra=None, reservation_mb=0, locked=False, version="v1"):
    return {"devices": list(devices), "extra": dict(extra or {}), "reservation_mb": reservation_mb, "locked": locked,
            "firmware": "efi", "change_version": version}


def assign_spec(address):
    return vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation=OP.add, device=device(-100, address))],
        extraConfig=[vim.option.OptionValue(key="gpupass.claim", value="c1")], memoryReservationLockedToMax=True)


def test_an_assign_taken_back_removes_its_device_claim_and_lock_and_nothing_else():
    before = config(extra={"guestinfo.a": "1"})
    now = config(devices=[device(4000, "0000:3b:00.0")], extra={"guestinfo.a": "1", "gpupass.claim": "c1",
                                                                "guestinfo.b": "an admin's"}, locked=True)
    spec = _inverse(now, before, _written(assign_spec("0000:3b:00.0")))
    assert [(str(c.operation), c.device.key) for c in spec.deviceChange] == [("remove", 4000)]
    assert [(o.key, o.value) for o in spec.extraConfig] == [("gpupass.claim", "")]   # guestinfo.b is not the run's
    assert spec.memoryReservationLockedToMax is False


def test_a_value_another_run_wrote_over_the_runs_own_is_left_and_nothing_left_is_none():
    before = config()
    wrote = _written(assign_spec("0000:3b:00.0"))
    theirs = config(extra={"gpupass.claim": "another run's"})              # device already gone, claim not the run's
    assert _inverse(theirs, before, wrote) is None


def test_a_removed_device_is_put_back_once_whatever_key_esxi_gave_it():
    held = device(4000, "0000:3b:00.0")
    before = config(devices=[held])
    release = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation=OP.remove, device=held)])
    wrote = _written(release)
    spec = _inverse(config(), before, wrote)
    assert [(str(c.operation), c.device.backing.id) for c in spec.deviceChange] == [("add", "0000:3b:00.0")]
    # put back already (a take-back whose answer was lost, read again): under a new key, and never a second time
    assert _inverse(config(devices=[device(4001, "0000:3b:00.0")]), before, wrote) is None
