"""ConfigSpecs for assign/release, the record gpupass keeps in the VM, and readable previews."""

from __future__ import annotations

import json
from typing import Any

from gpupass.backends.esxi.claims import CLAIM_KEY, INTENT_KEY
from gpupass.backends.esxi.inventory import HIDE_KEY, MMIO_ON, MMIO_SIZE, RECORD_KEY, dynamic_matches, s16
from gpupass.backends.esxi.state import VmPlan


def assign_changes(raw: VmPlan, devices: list[dict[str, Any]], *, window_gb: int | None, set_efi: bool,
                   hide: bool) -> dict[str, Any]:
    """The JSON-safe description of ONE ReconfigVM_Task for an assign (apply builds the ConfigSpec)."""
    record = json.loads(json.dumps(raw.record)) if raw.record else {"devices": [], "previous": {}}
    previous = record.setdefault("previous", {})
    extra: dict[str, str] = {}

    def remember(key: str, value: Any) -> None:
        previous.setdefault(key, value)

    remember("reservation_mb", raw.reservation_mb)
    remember("locked", raw.locked)
    if window_gb is not None:
        for key, value in ((MMIO_ON, "TRUE"), (MMIO_SIZE, str(window_gb))):
            previous.setdefault("extra", {}).setdefault(key, raw.extra.get(key))
            extra[key] = value
    if hide and raw.extra.get(HIDE_KEY, "").upper() != "FALSE":
        previous.setdefault("extra", {}).setdefault(HIDE_KEY, raw.extra.get(HIDE_KEY))
        extra[HIDE_KEY] = "FALSE"
    if set_efi:
        remember("firmware", raw.firmware)
    record["devices"] = [*record.get("devices", []), *devices]
    extra[RECORD_KEY] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return {"add": devices, "remove": [], "locked": True, "reservation_mb": raw.memory_mb,
            "extra": extra, "firmware": "efi" if set_efi else None}


def release_changes(raw: VmPlan, addresses: set[str]) -> dict[str, Any]:
    record = raw.record or {"devices": [], "previous": {}}
    leaving = [d for d in record.get("devices", []) if d.get("address") in addresses]
    staying = [d for d in record.get("devices", []) if d.get("address") not in addresses]
    # devices gpupass did not add (e.g. by hand in the vSphere client) are removed by their host address
    known = {d.get("address") for d in record.get("devices", [])}
    foreign = [{"address": a, "id": a, "dynamic": False} for a in sorted(addresses - known)]
    changes: dict[str, Any] = {"add": [], "remove": leaving + foreign, "locked": None, "reservation_mb": None,
                               "extra": {}, "firmware": None}
    if staying or record.get("vgpus"):  # the vGPUs gpupass added still need the reservation it recorded
        changes["extra"][RECORD_KEY] = json.dumps({**record, "devices": staying}, sort_keys=True,
                                                  separators=(",", ":"))
        return changes
    previous = record.get("previous", {})
    if "locked" in previous:
        changes["locked"] = bool(previous["locked"])
    if "reservation_mb" in previous:
        changes["reservation_mb"] = int(previous["reservation_mb"])
    for key, value in previous.get("extra", {}).items():
        changes["extra"][key] = "" if value is None else value  # "" removes the key
    if previous.get("firmware"):
        changes["firmware"] = previous["firmware"]
    if record:
        changes["extra"][RECORD_KEY] = ""
    if CLAIM_KEY in raw.extra:
        changes["extra"][CLAIM_KEY] = ""  # the claim that put the devices there goes with them
    if INTENT_KEY in raw.extra:
        changes["extra"][INTENT_KEY] = ""  # an assign a stopped run left unfinished: this release ends it
    return changes


def matches(device: Any, entry: dict[str, Any]) -> bool:
    from pyVmomi import vim

    backing = device.backing
    if entry.get("dynamic"):
        return (isinstance(backing, vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo)
                and dynamic_matches(backing, entry))
    return isinstance(backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo) and backing.id == entry["id"]


def build(changes: dict[str, Any], raw_devices: list[Any], backings: dict[str, Any]) -> Any:
    """The vim.vm.ConfigSpec for `changes`; `backings` maps host PCI id -> PciPassthroughInfo (static adds)."""
    from pyVmomi import vim

    pt: Any = vim.vm.device.VirtualPCIPassthrough  # a data object type: its backings are attributes of it
    op = vim.vm.device.VirtualDeviceSpec.Operation
    spec = vim.vm.ConfigSpec()
    device_changes = []
    for index, entry in enumerate(changes["add"]):
        if entry.get("vgpu"):
            # a vGPU: "the vGPU configuration type exposed by a VMIOP plugin" (API reference,
            # VirtualPCIPassthroughVmiopBackingInfo.vgpu); ESXi places it on a physical GPU at power-on
            device_changes.append(vim.vm.device.VirtualDeviceSpec(
                operation=op.add, device=pt(key=-100 - index, backing=pt.VmiopBackingInfo(vgpu=entry["vgpu"]))))
            continue
        if entry.get("dynamic"):
            # No customLabel: "If set, the device must also have the same customLabel attribute set"
            # (vSphere API reference, VirtualPCIPassthroughDynamicBackingInfo), i.e. it must equal the
            # hardware label an admin gave the host device; a label of gpupass' own matches no device.
            # AllowedDevice ids are xsd:int, "the vendor ID retrieved from the vSphere host": the signed
            # 16-bit value HostPciDevice carries.
            backing = pt.DynamicBackingInfo(
                allowedDevice=[pt.AllowedDevice(vendorId=s16(entry["vendor_id"]), deviceId=s16(entry["device_id"]))],
                deviceName="")
        else:
            info = backings[entry["id"]]
            dev = info.pciDevice
            backing = pt.DeviceBackingInfo(id=dev.id, deviceId=format(dev.deviceId & 0xFFFF, "x"),
                                           systemId=info.systemId, vendorId=dev.vendorId,
                                           deviceName=dev.deviceName)
        device_changes.append(vim.vm.device.VirtualDeviceSpec(operation=op.add,
                                                             device=pt(key=-100 - index, backing=backing)))
    taken: set[int] = set()  # two identical dynamic devices: each entry removes one of them
    vgpus = [d for d in raw_devices if isinstance(d, pt) and isinstance(d.backing, pt.VmiopBackingInfo)]
    for entry in changes["remove"]:
        if entry.get("vgpu"):
            device = _vgpu_device(vgpus, entry, taken)
            if device is not None:
                taken.add(device.key)
                device_changes.append(vim.vm.device.VirtualDeviceSpec(operation=op.remove, device=device))
            continue
        for device in raw_devices:
            if isinstance(device, pt) and device.key not in taken and matches(device, entry):
                taken.add(device.key)
                device_changes.append(vim.vm.device.VirtualDeviceSpec(operation=op.remove, device=device))
                if entry.get("dynamic"):
                    break
    if device_changes:
        spec.deviceChange = device_changes
    if changes.get("locked") is not None:
        spec.memoryReservationLockedToMax = changes["locked"]
    if changes.get("reservation_mb") is not None:
        spec.memoryAllocation = vim.ResourceAllocationInfo(reservation=changes["reservation_mb"])
    if changes.get("extra"):
        spec.extraConfig = [vim.option.OptionValue(key=k, value=v) for k, v in sorted(changes["extra"].items())]
    if changes.get("firmware"):
        spec.firmware = changes["firmware"]
    return spec


def _vgpu_device(vgpus: list[Any], entry: dict[str, Any], taken: set[int]) -> Any:
    """The VM's vGPU an entry names: its index-th vGPU if that is of the entry's profile, else the first of it."""
    index = int(entry.get("index") or 0) - 1
    if 0 <= index < len(vgpus) and vgpus[index].backing.vgpu == entry["vgpu"] and vgpus[index].key not in taken:
        return vgpus[index]
    return next((d for d in vgpus if d.backing.vgpu == entry["vgpu"] and d.key not in taken), None)


def preview(vm: str, host: str, raw: VmPlan, changes: dict[str, Any]) -> str:
    moref = raw.moid or "not created yet"
    lines = [f"ReconfigVM_Task on VM '{vm}' ({moref}) on {host}:"]
    for entry in changes["add"]:
        if entry.get("vgpu"):
            lines.append(f"  + VirtualPCIPassthrough VmiopBackingInfo vgpu={entry['vgpu']} (a vGPU: ESXi places it "
                         "on a GPU of the host at power-on)")
        elif entry.get("dynamic"):
            lines.append(f"  + VirtualPCIPassthrough DynamicBackingInfo allowedDevice="
                         f"{entry['vendor_id']:04x}:{entry['device_id']:04x} (no customLabel; planned for "
                         f"{entry['address']})")
        else:
            lines.append(f"  + VirtualPCIPassthrough DeviceBackingInfo id={entry['id']} "
                         f"vendorId={entry['vendor_id']:04x} deviceId={entry['device_id']:04x} "
                         f"({entry.get('name', '')}; systemId from QueryConfigTarget)")
    for entry in changes["remove"]:
        if entry.get("vgpu"):
            lines.append(f"  - VirtualPCIPassthrough VmiopBackingInfo vgpu={entry['vgpu']} (the VM's vGPU "
                         f"{entry.get('index')})")
            continue
        lines.append(f"  - VirtualPCIPassthrough {entry['address'] + ' (dynamic)' if entry.get('dynamic') else entry['id']}")
    if changes.get("locked") is not None:
        lines.append(f"  memoryReservationLockedToMax: {raw.locked} -> {changes['locked']}")
    if changes.get("reservation_mb") is not None:
        lines.append(f"  memoryAllocation.reservation: {raw.reservation_mb} MB -> {changes['reservation_mb']} MB")
    for key, value in sorted(changes.get("extra", {}).items()):
        before = raw.extra.get(key, "(unset)")
        after = value if value != "" else "(removed)"
        if key == RECORD_KEY:
            before = "(record)" if key in raw.extra else "(unset)"
            after = "(removed)" if value == "" else "(record of the previous settings, for release)"
        lines.append(f"  extraConfig {key}: {before} -> {after}")
    if changes.get("firmware"):
        lines.append(f"  firmware: {raw.firmware} -> {changes['firmware']}")
    return "\n".join(lines) + "\n"
