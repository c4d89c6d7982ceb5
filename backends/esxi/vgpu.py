"""NVIDIA vGPU on ESXi as neutral shares: what the host's graphics configuration says, as `Sharing` per GPU.

Read from the same PropertyCollector answer as the rest of the inventory (no extra round trip):

* `config.graphicsInfo` (HostGraphicsInfo, vSphere API 5.5): per graphics device its `pciId`, `graphicsType`
  (basic | shared | direct | sharedDirect: "Shared direct graphics (ex. vGPU shared passthrough)"),
  `memorySizeInKB` and `vm`, "Virtual machines using this graphics device" -- ESXi places a vGPU on a physical GPU
  when its VM powers on, so these are the running vGPU VMs (a powered-off VM's profile is on no GPU yet).
* `config.graphicsConfig` (HostGraphicsConfig, API 6.5): the host default graphics type and the shared passthrough
  assignment policy (performance: "assign VM to GPU with fewest VMs"; consolidation: "group like VMs on GPU until
  fully loaded").
* `config.sharedPassthruGpuTypes` (API 6.0): the vGPU profiles the host offers.

The API says neither a profile's framebuffer before 7.0.3 (`VirtualMachineVgpuProfileInfo.fbSizeInGib`, only through
QueryConfigTarget) nor its maximum instances per GPU at all, so:

* framebuffer: from the profile's name, "the number before the end of the vGPU profile name gives the GB of
  framebuffer memory" (VMware Cloud Foundation blog, "Viewing usage capacity for virtual GPUs in VCF 9.0"); NVIDIA's
  0Q/0B profiles are 512 MB (NVIDIA vGPU user guide, M60/M10 tables).
* maximum instances: the GPU's memory divided by the profile's framebuffer, which is what NVIDIA's tables give in
  equal-size mode (the real `mdevctl types` of a P40 in tests/fixtures/real/sharing/ agrees for all six types it
  lists: 24 GiB / 4096M = 6 for P40-4C); derived, so the description says so.
* one profile per GPU: time-sliced vGPUs on one physical GPU are of one type by default ("equal-size mode", NVIDIA
  vGPU user guide; API 8.0.3 adds HostGraphicsConfigVgpuMode sameSize | mixedSize): a GPU running vGPUs of one
  profile has no room for the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing
from gpupass.core.errors import UsageError

GRAPHICS_PROPS = ["config.graphicsInfo", "config.graphicsConfig", "config.sharedPassthruGpuTypes"]
# graphicsConfig is the newest of the three (pyvmomi _typeinfo_vim: vim.version.version11, vSphere 6.5)
GRAPHICS_MIN_API = (6, 5)
SHARED_DIRECT = "sharedDirect"
SHARED = "shared"
MiB = 1 << 20
GiB = 1 << 30

# grid_p40-4c, grid_a100-3-20c (MIG-backed: slices, then framebuffer), nvidia_l40s-48q, grid_p40-2b4
_PROFILE = re.compile(r"^(?P<prefix>[a-z]+)_(?P<board>[a-z0-9_]+?)-(?:(?P<slices>\d+)-)?(?P<fb>\d+)(?P<series>[a-z])\d*$")


def profile_framebuffer(name: str) -> int | None:
    """Framebuffer in bytes read from a profile name (None when the name does not follow NVIDIA's convention)."""
    match = _PROFILE.match(name.strip().lower())
    if not match:
        return None
    gigabytes = int(match["fb"])
    return 512 * MiB if gigabytes == 0 else gigabytes * GiB


@dataclass
class GraphicsDevice:
    address: PciAddress
    graphics_type: str
    memory_bytes: int | None
    vm_moids: tuple[str, ...] = ()
    pci_id: str = ""  # graphicsInfo.pciId as the host writes it: the deviceId HostGraphicsConfig takes


@dataclass
class HostGraphics:
    default_type: str | None = None
    assignment_policy: str | None = None
    profiles: tuple[str, ...] = ()
    devices: dict[PciAddress, GraphicsDevice] = field(default_factory=dict)
    # graphicsConfig.deviceType: the configured type of each device that overrides the host default, by the
    # device id the host uses (HostGraphicsConfigDeviceType.deviceId)
    device_types: dict[str, str] = field(default_factory=dict)

    @property
    def read(self) -> bool:
        return self.default_type is not None or bool(self.devices)


def read_host(props: dict[str, Any]) -> HostGraphics:
    """The graphics part of one host's properties (`GRAPHICS_PROPS`)."""
    config = props.get("config.graphicsConfig")
    graphics = HostGraphics(
        default_type=str(config.hostDefaultGraphicsType) if config is not None else None,
        assignment_policy=str(config.sharedPassthruAssignmentPolicy) if config is not None else None,
        profiles=tuple(str(p) for p in props.get("config.sharedPassthruGpuTypes") or ()),
        device_types={str(d.deviceId): str(d.graphicsType) for d in getattr(config, "deviceType", None) or ()})
    for info in props.get("config.graphicsInfo") or ():
        try:
            address = PciAddress.parse(str(info.pciId))  # "bus:slot.function" or the full host PCI id
        except UsageError:
            continue
        memory = int(info.memorySizeInKB or 0) * 1024
        graphics.devices[address] = GraphicsDevice(address, str(info.graphicsType), memory or None,
                                                   tuple(vm._moId for vm in info.vm or ()), str(info.pciId))
    return graphics


def settings_of(graphics: HostGraphics) -> dict[str, Any]:
    """The host's graphics as `settings.hosts[HOST].graphics` carries them (JSON-safe; snapshots keep them): the
    configured default type, policy and per-device types (graphicsConfig), and the type each device runs now
    (graphicsInfo), which differs from the configured one until Xorg restarts or the host reboots (graphics.py)."""
    return {"default_type": graphics.default_type, "assignment_policy": graphics.assignment_policy,
            "vgpu_profiles": list(graphics.profiles), "device_types": dict(sorted(graphics.device_types.items())),
            "active_types": {d.pci_id or str(a): d.graphics_type for a, d in sorted(graphics.devices.items())},
            "running_vgpus": {d.pci_id or str(a): len(d.vm_moids) for a, d in sorted(graphics.devices.items())
                              if d.vm_moids}}


def device_id(settings: dict[str, Any], address: PciAddress) -> str | None:
    """The host's own id of the graphics device at `address` (a key of settings_of's active_types), or None."""
    for pci_id in settings.get("active_types") or {}:
        try:
            found = PciAddress.parse(pci_id)
        except UsageError:
            continue
        if (found.bus, found.slot, found.function) == (address.bus, address.slot, address.function):
            return str(pci_id)
    return None


def _find(devices: dict[PciAddress, GraphicsDevice], address: PciAddress) -> GraphicsDevice | None:
    # graphicsInfo's pciId may carry no PCI domain ("bus:slot.function"), so the domain is not compared
    return devices.get(address) or next((d for a, d in devices.items()
                                         if (a.bus, a.slot, a.function) == (address.bus, address.slot, address.function)),
                                        None)


@dataclass(frozen=True)
class Parked:
    """A vGPU of a VM that is not running: ESXi places it on a GPU only at power-on, so it is shown on the GPU
    gpupass recorded when it added it (else the host's first GPU that offers its profile and runs no other profile,
    else the first that offers it) and takes no room there."""

    vm: str
    index: int  # 1-based, among the VM's vGPU devices
    profile: str


def share_id(vm: str, index: int) -> str:
    return f"{vm}/vgpu-{index}"


def park(graphics: HostGraphics, vm: str, profiles: tuple[str, ...], recorded: dict[int, str],
         running: dict[PciAddress, set[str]]) -> dict[PciAddress, list[Parked]]:
    """Where the vGPUs of a VM that is not running are shown: `recorded` maps a vGPU's index to the GPU address
    gpupass' record names for it; `running`: the profiles running on each GPU."""
    out: dict[PciAddress, list[Parked]] = {}
    for index, profile in enumerate(profiles, start=1):
        address = None
        if index in recorded:
            try:
                address = PciAddress.parse(recorded[index])
            except UsageError:
                address = None
        if address is None or _find(graphics.devices, address) is None:
            offering = [a for a, d in sorted(graphics.devices.items())
                        if d.graphics_type == SHARED_DIRECT and profile in graphics.profiles]
            address = next((a for a in offering if running.get(a, set()) <= {profile}),
                           offering[0] if offering else None)
        if address is not None:
            out.setdefault(address, []).append(Parked(vm, index, profile))
    return out


def sharing_of(graphics: HostGraphics, address: PciAddress, models: dict[PciAddress, tuple[int, int]],
               vm_names: dict[str, str], vm_profiles: dict[str, tuple[str, ...]],
               parked: tuple[Parked, ...] = ()) -> Sharing:
    """The vGPU profiles GPU `address` offers, the vGPUs running on it and those `parked` there.

    `models`: vendor/device ids of the host's GPUs (the host's profile list is per host, so a profile is given to
    every GPU in shared direct mode only when they are all one model); `vm_names`: moid -> VM name;
    `vm_profiles`: VM name -> the profiles of its vGPU devices, in device order.
    """
    device = _find(graphics.devices, address)
    if device is None:
        return Sharing()
    shared_models = {models.get(a) for a, d in graphics.devices.items() if d.graphics_type == SHARED_DIRECT}
    host_change = ""
    if device.graphics_type == SHARED:
        # A GPU with the vGPU manager in shared (vSGA) mode offers no profile (the host lists the profiles of its
        # shared direct GPUs: assumed, see the module docstring); where GPUs of its model are in shared direct mode,
        # it offers theirs once switched, which a plan may do first (graphics.py).
        if len(shared_models) != 1 or models.get(device.address) not in shared_models:
            return Sharing()
        host_change = (f"its graphics type is shared (VMware shared graphics, vSGA) and vGPU needs shared direct "
                       f"(HostGraphicsManager.UpdateGraphicsConfig with device {device.pci_id or address} "
                       "sharedDirect, then an Xorg restart)")
    elif device.graphics_type != SHARED_DIRECT:
        return Sharing()
    one_model = len(shared_models) == 1
    holders = [vm_names.get(moid, moid) for moid in device.vm_moids]
    # A VM with several vGPUs has them on as many GPUs (one each); graphicsInfo does not say which profile landed
    # where, so a VM whose vGPUs differ counts as "one of them" here (its profiles joined by '+').
    on_gpu = {vm: "+".join(sorted(set(vm_profiles.get(vm, ())))) for vm in holders}
    resident = set(on_gpu.values()) - {""}
    types = []
    for profile in graphics.profiles:
        framebuffer = profile_framebuffer(profile)
        most = (device.memory_bytes // framebuffer if device.memory_bytes and framebuffer and one_model else None)
        if most is None:
            available = None
        elif resident and profile not in resident:
            available = 0  # one profile per GPU in equal-size mode
        else:
            available = max(0, most - sum(1 for held in on_gpu.values() if held == profile))
        note = "time-sliced vGPU profile"
        if most is not None:
            note += "; max instances = the GPU's memory / the profile's framebuffer (NVIDIA equal-size mode)"
        elif not one_model:
            note += "; the host offers it, but vSphere does not say which of its GPU models"
        types.append(ShareType(profile, profile, ShareMode.VGPU_PROFILE, available=available, max_instances=most,
                               framebuffer_bytes=framebuffer, description=note))
    shares = tuple(Share(share_id(vm, 1) if len(vm_profiles.get(vm, ())) == 1 else f"{vm}/vgpu@{address}",
                         on_gpu[vm] or "unknown", ShareMode.VGPU_PROFILE, vm) for vm in holders)
    shares += tuple(Share(share_id(p.vm, p.index), p.profile, ShareMode.VGPU_PROFILE, p.vm)
                    for p in parked if p.vm not in holders)
    # time-sliced vGPUs of one profile per GPU (equal-size mode, see the module's docstring)
    return Sharing(tuple(types), shares, one_type_at_a_time=True, host_change=host_change)
