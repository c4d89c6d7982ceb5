"""What a backend reports about a host: its GPUs, its VMs and the PCI functions around them."""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping

from gpupass.core.domain.pci import Bar, IommuGroup, PciAddress, PciFunction
from gpupass.core.domain.sharing import Sharing
from gpupass.core.records import field, record


@record(frozen=True)
class PassthroughState:
    """Host-side passthrough switch; None where the platform has no such switch (KVM binds at VM start)."""

    capable: bool | None = None
    enabled: bool | None = None
    active: bool | None = None
    reasons: tuple[str, ...] = ()
    # The host can switch the device to passthrough at once, without a reboot (ESXi 7.0+ with
    # HostCapability.deviceRebindWithoutRebootSupported: UpdatePassthruConfig with applyNow).
    activates_without_reboot: bool = False


@record(frozen=True)
class Gpu:
    function: PciFunction
    companions: tuple[PciFunction, ...] = ()
    iommu_group: IommuGroup | None = None
    passthrough: PassthroughState = field(default_factory=PassthroughState)
    assigned_to: str | None = None
    model: str = ""
    # Which host of a multi-host endpoint (a vCenter) the card sits in; "" for a single host.
    location: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # What the card offers for sharing (vGPU types, partitions) and the shares it holds (core/domain/sharing.py).
    sharing: Sharing = field(default_factory=Sharing)

    @property
    def address(self) -> PciAddress:
        return self.function.address

    @property
    def functions(self) -> tuple[PciFunction, ...]:
        return (self.function, *self.companions)

    # A platform whose admins do not see PCI addresses names devices its own way (Hyper-V: the LocationPath
    # Windows prints); the backend puts that name in `extra` and gpupass prints it and accepts it back.
    @property
    def native_address(self) -> str:
        return str(self.extra.get("location_path") or "")

    @property
    def native_addresses(self) -> tuple[str, ...]:
        """The platform's own names of every function of the card (the GPU's first)."""
        paths = self.extra.get("location_paths") or ([self.native_address] if self.native_address else [])
        return tuple(str(p) for p in paths)

    @property
    def bars(self) -> tuple[Bar, ...] | None:
        """All BARs of the card's functions, or None when any function's BARs are unknown."""
        collected: list[Bar] = []
        for function in self.functions:
            if function.bars is None:
                return None
            collected.extend(function.bars)
        return tuple(collected)


def qualified(gpu: Gpu) -> str:
    """The name gpupass prints for a GPU: the platform's own name where it has one, else the address."""
    return (gpu.location + "/" if gpu.location else "") + (gpu.native_address or str(gpu.address))


class PowerState(str, Enum):
    OFF = "off"
    RUNNING = "running"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


class Firmware(str, Enum):
    BIOS = "bios"
    EFI = "efi"
    UNKNOWN = "unknown"


@record(frozen=True)
class Vm:
    name: str
    power_state: PowerState
    firmware: Firmware
    memory_bytes: int
    memory_reserved_bytes: int | None = None
    # The guest's 64-bit MMIO window as configured; None means the platform default.
    mmio_window_bytes: int | None = None
    assigned: tuple[PciAddress, ...] = ()
    id: str = ""
    location: str = ""
    snapshots: int = 0
    hypervisor_hidden: bool = False
    # Neutral settings that migration plans and rules read, filled by every backend; None where the platform
    # does not say (shown as unknown), never a guessed default.
    binding: str | None = None  # "address": one host device by its address; "dynamic": any device of a model
    stop_action: str | None = None  # what the host does with the VM when the host shuts down, in its own words
    dynamic_memory: bool | None = None  # whether the guest's memory is resized while it runs
    # Platform facts that platform rules read (e.g. Hyper-V dynamic memory); JSON-safe values only.
    settings: Mapping[str, Any] = field(default_factory=dict)
    # gpupass operations on this VM that were started and never finished (the intent record of a run that
    # was killed or lost its connection), in words, with how to finish or revert them.
    unfinished: tuple[str, ...] = ()

    @property
    def is_off(self) -> bool:
        return self.power_state is PowerState.OFF


@record(frozen=True)
class Host:
    uri: str
    platform: str
    name: str = ""
    iommu_enabled: bool | None = None
    iommu_reasons: tuple[str, ...] = ()
    maintenance_mode: bool | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    # What a stopped gpupass run left on the host that belongs to no VM of it (KVM: a claim naming a VM that was
    # undefined since), in words, with how to clear it; shown by `status` beside the VMs' own `unfinished`.
    unfinished: tuple[str, ...] = ()


@record(frozen=True)
class HostFacts:
    host: Host
    gpus: tuple[Gpu, ...] = ()
    vms: tuple[Vm, ...] = ()
    # Every PCI function the backend saw, so rules can tell a bridge from a SATA controller in a group.
    functions: Mapping[tuple[str, PciAddress], PciFunction] = field(default_factory=dict)
    # Maintenance mode of each host of a multi-host endpoint (a vCenter), by location.
    maintenance: Mapping[str, bool] = field(default_factory=dict)
    # What the platform's planner needs beyond the neutral facts (KVM: each domain's XML), typed by the
    # backend and opaque to the core. Planners read it from here, never from what a connection cached, so a
    # plan from a snapshot is the plan from the live host (Backend.state_to_json / state_from_json).
    state: Any = None

    def in_maintenance(self, location: str = "") -> bool:
        return bool(self.maintenance.get(location, self.host.maintenance_mode))

    def function(self, address: PciAddress, location: str = "") -> PciFunction | None:
        return self.functions.get((location, address))

    def find_vm(self, name: str) -> Vm | None:
        return next((vm for vm in self.vms if vm.name == name), None)

    def gpus_at(self, address: PciAddress) -> list[Gpu]:
        """GPUs whose display function or a companion has this address (one per location)."""
        return [gpu for gpu in self.gpus if any(f.address == address for f in gpu.functions)]
