"""One PropertyCollector read (a ContainerView + RetrievePropertiesEx, plus continuations) -> HostFacts."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from gpupass.backends.esxi import vgpu
from gpupass.backends.esxi.lean import is_a
from gpupass.core.domain.grouping import group_gpus
from gpupass.core.domain.inventory import Firmware, Host, HostFacts, PassthroughState, PowerState, Vm
from gpupass.core.domain.mmio import GiB, MiB
from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.core.errors import UsageError

RECORD_KEY = "gpupass.assignment"
MMIO_ON = "pciPassthru.use64bitMMIO"
MMIO_SIZE = "pciPassthru.64bitMMIOSizeGB"
HIDE_KEY = "hypervisor.cpuid.v0"

HOST_PROPS = ["name", "hardware.pciDevice", "config.pciPassthruInfo", "runtime.inMaintenanceMode",
              "runtime.connectionState", "parent"]
# vSphere API 7.0 (pyvmomi: vim.version.v7_0): "the capability which enables PCI passthrough and SR-IOV
# configuration without reboot" (govmomi vim25/types HostCapability). Asked for only on 7.0+ endpoints,
# since an older one does not know the property.
REBIND_PROP = "capability.deviceRebindWithoutRebootSupported"
# With pciPassthru.use64bitMMIO=TRUE but no pciPassthru.64bitMMIOSizeGB: assumed 32 GB (no published
# value found; gpupass always writes the size, so this only matters for VMs configured by hand).
DEFAULT_64BIT_WINDOW = 32 * GiB
COMPUTE_PROPS = ["name", "environmentBrowser"]
CLUSTER_PROPS = ["name", "environmentBrowser", "configurationEx"]
VM_PROPS = ["name", "runtime.powerState", "runtime.host", "config.firmware", "config.hardware.memoryMB",
            "config.memoryAllocation.reservation", "config.memoryReservationLockedToMax",
            "config.hardware.device", "config.extraConfig", "snapshot", "runtime.faultToleranceState",
            "config.instanceUuid", "config.changeVersion"]


def recorded_vgpus(record: dict[str, Any]) -> dict[int, str]:
    """vGPU index -> the GPU address gpupass' record names for it (the GPU named when the vGPU was added)."""
    out = {}
    for entry in record.get("vgpus", ()) if isinstance(record, dict) else ():
        try:
            out[int(entry["index"])] = str(entry["gpu"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


@functools.lru_cache(maxsize=4096)
def _address(pci_id: str) -> PciAddress | None:
    """PciAddress.parse of a host's PCI id, remembered: hosts of one model report the same ids, and each parse
    validates every field (at 200 hosts, 18,000 parses were a third of the inventory's own work)."""
    try:
        return PciAddress.parse(pci_id)
    except UsageError:
        return None


def u16(value: int | None) -> int:
    """vSphere sends vendor/device/class ids as signed 16-bit numbers (0x8086 reads -32634)."""
    return (value or 0) & 0xFFFF


def s16(value: int) -> int:
    value &= 0xFFFF
    return value - 0x10000 if value >= 0x8000 else value


@dataclass
class HostRaw:
    ref: Any
    name: str
    maintenance: bool
    connected: bool
    cluster: str | None
    environment_browser: Any
    pci: dict[str, Any] = field(default_factory=dict)  # id -> vim.host.PciDevice
    enabled: dict[str, bool] = field(default_factory=dict)
    active: dict[str, bool] = field(default_factory=dict)
    ha: bool = False
    drs: bool = False
    drs_behavior: str | None = None
    rebind: bool = False  # HostCapability.deviceRebindWithoutRebootSupported
    graphics: vgpu.HostGraphics = field(default_factory=vgpu.HostGraphics)  # vGPU: see vgpu.py


@dataclass
class VmRaw:
    ref: Any
    name: str
    host: str
    memory_mb: int
    reservation_mb: int
    locked: bool
    firmware: str
    extra: dict[str, str]
    devices: list[Any]  # its VirtualPCIPassthrough devices: the inventory reads no others (retrieve_view)
    change_version: str | None
    record: dict[str, Any]
    vgpus: tuple[str, ...] = ()  # the profiles of its vGPU devices (VirtualPCIPassthroughVmiopBackingInfo.vgpu)


VIEW_KINDS = ("HostSystem", "ComputeResource", "VirtualMachine")
# Objects per answer (RetrieveOptions.maxObjects): "the server may limit the number of objects returned to
# less than this number" and returns a token for the rest (vSphere API reference, RetrieveOptions).
MAX_OBJECTS = 1000


def container_view(content: Any, root: Any) -> Any:
    """A ContainerView of every host, compute resource and VM under root. It follows the inventory as it
    changes ("the view list always represents the current configuration of the virtual environment and
    reflects any subsequent changes that occur") and "exists until you terminate it by calling the
    DestroyView method, or until the end of the session" (vSphere Web Services API reference, ContainerView
    and View), so a backend keeps one per session and reads through it."""
    from pyVmomi import vim

    return content.viewManager.CreateContainerView(root, [getattr(vim, kind) for kind in VIEW_KINDS], True)


def retrieve_view(content: Any, view: Any, types_props: list[tuple[Any, list[str]]],
                  on_request: Callable[[], None]) -> list[Any]:
    """The given properties of every object in the view: RetrievePropertiesEx + continuations, each request
    counted with on_request(). Read by the lean reader (collect.py), keeping only the VirtualPCIPassthrough
    devices of config.hardware.device: the only devices anything here looks at (passthrough_devices)."""
    from pyVmomi import vim, vmodl

    from gpupass.backends.esxi import collect

    pc_type = vmodl.query.PropertyCollector
    spec = pc_type.FilterSpec(
        objectSet=[pc_type.ObjectSpec(obj=view, skip=True, selectSet=[
            pc_type.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)])],
        propSet=[pc_type.PropertySpec(type=t, pathSet=props) for t, props in types_props])
    return collect.retrieve(content.propertyCollector, [spec], pc_type.RetrieveOptions(maxObjects=MAX_OBJECTS),
                            on_request, devices=(vim.vm.device.VirtualPCIPassthrough,))


def properties(rebind_known: bool, graphics_known: bool) -> list[tuple[str, list[str]]]:
    """(type, property paths) the inventory asks for. `rebind_known`: the endpoint speaks vSphere API 7.0+, so
    the rebind capability can be asked for; `graphics_known`: 6.5+, so the graphics configuration (vGPU) can."""
    host_props = HOST_PROPS + [REBIND_PROP] if rebind_known else list(HOST_PROPS)
    if graphics_known:
        host_props += vgpu.GRAPHICS_PROPS
    return [("HostSystem", host_props), ("ComputeResource", COMPUTE_PROPS),
            ("ClusterComputeResource", CLUSTER_PROPS), ("VirtualMachine", VM_PROPS)]


def read(objects: list[Any], uri: str, platform: str,
         label: str) -> tuple[HostFacts, dict[str, HostRaw], dict[str, VmRaw]]:
    """The facts from the ObjectContents of ONE RetrievePropertiesEx (and its continuations) of `properties()`
    through the session's view: lean objects (lean.py) or pyVmomi's, read alike."""
    props = [(o.obj, {p.name: p.val for p in o.propSet}) for o in objects]
    computes = {obj._moId: p for obj, p in props if is_a(obj, "ComputeResource")}
    hosts: dict[str, HostRaw] = {}
    passthru: dict[str, dict[PciAddress, PassthroughState]] = {}
    functions: dict[str, dict[PciAddress, PciFunction]] = {}
    by_moid: dict[str, str] = {}
    for obj, p in props:
        if not is_a(obj, "HostSystem"):
            continue
        parent = p.get("parent")
        compute = computes.get(parent._moId, {}) if parent is not None else {}
        is_cluster = is_a(parent, "ClusterComputeResource")
        raw = HostRaw(obj, p["name"], bool(p.get("runtime.inMaintenanceMode")),
                      str(p.get("runtime.connectionState")) == "connected",
                      compute.get("name") if is_cluster else None, compute.get("environmentBrowser"))
        config = compute.get("configurationEx")
        if config is not None:
            raw.ha = bool(getattr(getattr(config, "dasConfig", None), "enabled", False))
            drs = getattr(config, "drsConfig", None)
            raw.drs = bool(getattr(drs, "enabled", False))
            raw.drs_behavior = str(getattr(drs, "defaultVmBehavior", None) or "") or None
        raw.rebind = bool(p.get(REBIND_PROP))
        raw.graphics = vgpu.read_host(p)
        hosts[raw.name] = raw
        by_moid[obj._moId] = raw.name
        funcs: dict[PciAddress, PciFunction] = {}
        for dev in p.get("hardware.pciDevice") or ():
            address = _address(dev.id)
            if address is None:
                continue
            raw.pci[dev.id] = dev
            funcs[address] = PciFunction(address, u16(dev.vendorId), u16(dev.deviceId), u16(dev.classId) << 8,
                                         name=dev.deviceName or "")
        functions[raw.name] = funcs
        states: dict[PciAddress, PassthroughState] = {}
        for info in p.get("config.pciPassthruInfo") or ():
            address = _address(info.id)
            if address is None:
                continue
            raw.enabled[info.id], raw.active[info.id] = bool(info.passthruEnabled), bool(info.passthruActive)
            reasons = () if info.passthruCapable else ("the host reports the device as not passthrough capable",)
            # applyNow switches a device that is not enabled yet; one already enabled but not active
            # was left for the next reboot (by an older client or applyNow=False), so it needs one.
            at_once = raw.rebind and bool(info.passthruCapable) and not info.passthruEnabled
            states[address] = PassthroughState(bool(info.passthruCapable), bool(info.passthruEnabled),
                                               bool(info.passthruActive), reasons, activates_without_reboot=at_once)
        passthru[raw.name] = states

    vms: list[Vm] = []
    raws: dict[str, VmRaw] = {}
    owners: dict[str, dict[PciAddress, str]] = {name: {} for name in hosts}
    for obj, p in props:
        if not is_a(obj, "VirtualMachine") or "config.hardware.memoryMB" not in p:
            continue
        host_ref = p.get("runtime.host")
        location = by_moid.get(host_ref._moId, "") if host_ref is not None else ""
        vm_raw, vm = _vm(obj, p, location, hosts.get(location))
        raws[vm.name] = vm_raw
        vms.append(vm)
        for address in vm.assigned:
            owners.setdefault(location, {})[address] = vm.name

    vm_names = {raw.ref._moId: name for name, raw in raws.items()}
    vm_profiles = {name: raw.vgpus for name, raw in raws.items() if raw.vgpus}
    running = {vm_names.get(moid, moid) for h in hosts.values() for d in h.graphics.devices.values()
               for moid in d.vm_moids}
    gpus = []
    for name in sorted(hosts):
        grouped = group_gpus(functions[name].values(), {}, owners.get(name, {}), passthru[name], location=name)
        graphics = hosts[name].graphics
        if graphics.devices:
            models = {a: (f.vendor_id, f.device_id) for a, f in functions[name].items()}
            parked: dict[PciAddress, list[vgpu.Parked]] = {}
            resident = {a: {p for moid in d.vm_moids for p in vm_profiles.get(vm_names.get(moid, moid), ())}
                        for a, d in graphics.devices.items()}
            for vm_name, profiles in vm_profiles.items():
                if raws[vm_name].host == name and vm_name not in running:
                    for address, entries in vgpu.park(graphics, vm_name, profiles,
                                                      recorded_vgpus(raws[vm_name].record), resident).items():
                        parked.setdefault(address, []).extend(entries)
            grouped = [dataclasses.replace(gpu, sharing=vgpu.sharing_of(
                graphics, gpu.address, models, vm_names, vm_profiles, tuple(parked.get(gpu.address, ()))))
                for gpu in grouped]
        gpus += grouped
    gpus.sort(key=lambda g: (g.location, g.address))
    single = len(hosts) == 1
    only = next(iter(hosts.values())) if single else None
    host = Host(
        uri=uri, platform=platform, name=label,
        # ESXi does not report VT-d/AMD-Vi itself; passthruCapable on the devices is its verdict.
        iommu_enabled=True if any(s.capable for st in passthru.values() for s in st.values()) else None,
        maintenance_mode=only.maintenance if only else None,
        settings={"hosts": {h.name: {"maintenance_mode": h.maintenance, "connected": h.connected,
                                     "cluster": h.cluster, "ha": h.ha, "drs": h.drs,
                                     "drs_behavior": h.drs_behavior,
                                     **({"graphics": vgpu.settings_of(h.graphics)} if h.graphics.read else {})} for h in hosts.values()}},
    )
    table = {(loc, a): f for loc, funcs in functions.items() for a, f in funcs.items()}
    facts = HostFacts(host, tuple(gpus), tuple(sorted(vms, key=lambda v: (v.name, v.location))), table,
                      maintenance={h.name: h.maintenance for h in hosts.values()})
    return facts, hosts, raws


_POWER = {"poweredOn": PowerState.RUNNING, "poweredOff": PowerState.OFF, "suspended": PowerState.SUSPENDED}


def _count_snapshots(nodes: Any) -> int:
    return sum(1 + _count_snapshots(n.childSnapshotList) for n in nodes or ())


def allowed_pair(backing: Any) -> tuple[int, int] | None:
    """(vendor, device) of a Dynamic DirectPath backing's first allowed device, as unsigned 16-bit ids."""
    allowed = list(getattr(backing, "allowedDevice", None) or ())
    if not allowed:
        return None
    return u16(allowed[0].vendorId), u16(allowed[0].deviceId)


def dynamic_matches(backing: Any, entry: dict[str, Any]) -> bool:
    """Is this Dynamic DirectPath backing the one a record entry describes?

    gpupass sets no customLabel (a label must equal the host device's hardware label, vSphere API
    reference), so an entry is matched by its vendor/device pair; records written by older gpupass
    versions carry the label they set instead.
    """
    if entry.get("label") and getattr(backing, "customLabel", None):
        return bool(backing.customLabel == entry["label"])
    return bool(allowed_pair(backing) == (u16(entry.get("vendor_id")), u16(entry.get("device_id"))))


def passthrough_devices(devices: list[Any] | None) -> list[Any]:
    return [d for d in devices or () if is_a(d, "VirtualPCIPassthrough")]


def vm_from_properties(obj: Any, p: dict[str, Any], location: str,
                       host: HostRaw | None) -> tuple[VmRaw | None, Vm | None]:
    """One VM from its VM_PROPS, as `read` builds it; (None, None) for a VM not fully readable (a template
    being created, an inaccessible VM), which the inventory leaves out too."""
    if "config.hardware.memoryMB" not in p:
        return None, None
    return _vm(obj, p, location, host)


def _vm(obj: Any, p: dict[str, Any], location: str, host: HostRaw | None) -> tuple[VmRaw, Vm]:
    extra = {o.key: str(o.value) for o in p.get("config.extraConfig") or ()}
    try:
        record = json.loads(extra.get(RECORD_KEY, "") or "{}")
    except ValueError:
        record = {}
    devices = list(p.get("config.hardware.device") or ())
    memory_mb = int(p.get("config.hardware.memoryMB") or 0)
    reservation = int(p.get("config.memoryAllocation.reservation") or 0)
    locked = bool(p.get("config.memoryReservationLockedToMax"))
    raw = VmRaw(obj, p["name"], location, memory_mb, reservation, locked, str(p.get("config.firmware") or ""),
                extra, devices, p.get("config.changeVersion"), record)
    # A dynamic device names a vendor/device pair, not an address: until ESXi reports assignedId (at
    # power-on), it stands for the GPU gpupass planned for, paired in order with the record's entries.
    planned = [d for d in record.get("devices", ()) if d.get("dynamic")]
    assigned: list[PciAddress] = []
    binding = None
    for dev in passthrough_devices(devices):
        backing = dev.backing
        if is_a(backing, "VirtualPCIPassthroughVmiopBackingInfo"):
            raw.vgpus += (str(backing.vgpu or ""),)
            continue
        if is_a(backing, "VirtualPCIPassthroughDeviceBackingInfo"):
            binding = binding or "static"
            text = backing.id
        elif is_a(backing, "VirtualPCIPassthroughDynamicBackingInfo"):
            binding = "dynamic"
            entry = next((d for d in planned if dynamic_matches(backing, d)), None)
            if entry is not None:
                planned.remove(entry)
            text = str(getattr(backing, "assignedId", None) or (entry or {}).get("address") or "")
        else:
            continue
        try:
            assigned.append(PciAddress.parse(text))
        except (UsageError, TypeError, AttributeError):
            continue
    window = None  # no 64-bit window: the 917504-page budget applies (see EsxiBackend.mmio_policy)
    if extra.get(MMIO_ON, "").strip().upper() == "TRUE":
        size = extra.get(MMIO_SIZE, "").strip()
        window = int(size) * GiB if size.isdigit() else DEFAULT_64BIT_WINDOW
    ft = str(p.get("runtime.faultToleranceState") or "notConfigured")
    snapshot = p.get("snapshot")
    settings: dict[str, Any] = {"ft": ft,
                                "assigned_by_gpupass": sorted(d.get("address") for d in record.get("devices", ()))}
    if raw.vgpus:
        settings["vgpu_profiles"] = list(raw.vgpus)
    if host is not None:
        settings.update(cluster=host.cluster, ha=host.ha, drs=host.drs)
    vm = Vm(
        name=raw.name,
        id=str(p.get("config.instanceUuid") or obj._moId),
        power_state=_POWER.get(str(p.get("runtime.powerState")), PowerState.UNKNOWN),
        firmware={"efi": Firmware.EFI, "bios": Firmware.BIOS}.get(raw.firmware, Firmware.UNKNOWN),
        memory_bytes=memory_mb * MiB,
        memory_reserved_bytes=memory_mb * MiB if locked else reservation * MiB,
        mmio_window_bytes=window,
        assigned=tuple(sorted(assigned)),
        location=location,
        snapshots=_count_snapshots(snapshot.rootSnapshotList) if snapshot is not None else 0,
        hypervisor_hidden=extra.get(HIDE_KEY, "").upper() == "FALSE",
        # Stop action: the host's HostAutoStartManager, not read; dynamic memory: no such VM setting read.
        binding={"static": "address", "dynamic": "dynamic"}.get(binding or ""), stop_action=None,
        dynamic_memory=None,
        settings=settings,
    )
    return raw, vm
