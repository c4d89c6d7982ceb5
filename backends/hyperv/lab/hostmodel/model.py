"""State of a modelled Hyper-V host (PnP devices, VMs, assignable devices).

Pure data + the state transitions the Hyper-V/PnP cmdlets perform.  Every
refused transition raises :class:`HyperVError` carrying the message,
FullyQualifiedErrorId and category PowerShell would print.  The whole state
round-trips through JSON (:meth:`HostModel.to_json` / :meth:`HostModel.from_json`).
"""
from __future__ import annotations

import copy
import json
import threading
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Enum values as PowerShell 5.1 serialises them with ConvertTo-Json.
VM_STATES = {"Other": 1, "Running": 2, "Off": 3, "Stopping": 4, "Saved": 6, "Paused": 9,
             "Starting": 10, "Reset": 11, "Saving": 32773, "Pausing": 32776, "Resuming": 32777}
STOP_ACTIONS = {"TurnOff": 2, "Save": 3, "ShutDown": 4}
SNAPSHOT_TYPES = {"Standard": 5, "Recovery": 6, "Planned": 7, "Missing": 8, "Replica": 9,
                  "AppConsistentReplica": 10, "SyncedReplica": 11}

DEFAULT_LOW_MMIO = 128 * 1024 * 1024
DEFAULT_HIGH_MMIO = 512 * 1024 * 1024

# PCI device types reported by DEVPKEY_PciDevice_DeviceType
PCI_DEVICE_TYPES = {"PciConventional": 0, "PciX": 1, "PciExpressEndpoint": 2,
                    "PciExpressLegacyEndpoint": 3, "PciExpressRootComplexIntegratedEndpoint": 4,
                    "PciExpressTreatedAsPci": 5}


class HyperVError(Exception):
    """An error record a cmdlet writes.

    ``kind`` is ``"nonterminating"`` (Write-Error style, subject to
    -ErrorAction / $ErrorActionPreference) or ``"terminating"``
    (ThrowTerminatingError: always stops the statement, caught by try/catch).
    """

    def __init__(self, message: str, fqid: str, category: str = "InvalidOperation",
                 exception: str = "Microsoft.HyperV.PowerShell.VirtualizationException",
                 target: str = "", kind: str = "nonterminating"):
        super().__init__(message)
        self.message = message
        self.fqid = fqid
        self.category = category
        self.exception = exception
        self.target = target
        self.kind = kind


@dataclass
class PnpDevice:
    """One PCI function as PnP sees it."""
    instance_id: str
    friendly_name: str
    pnp_class: str                    # Display / Media / ...; "" while no driver is installed (see below)
    location_path: str                # PCIROOT(..)#PCI(..)...
    vendor_id: int
    device_id: int
    bars: list[int] = field(default_factory=list)   # BAR sizes in bytes (MMIO need = sum)
    # How many of `bars` (from the first) the host firmware placed below 4 GiB; the others lie above it. A 32-bit
    # BAR must lie below (NVIDIA's 16 MiB BAR0 is one: "Memory at ... (32-bit, non-prefetchable) [size=16M]" in the
    # lspci outputs of tests/fixtures/real/kvm/). Windows reports only where each range lies
    # (Win32_DeviceMemoryAddress StartingAddress/EndingAddress), which is what Get-CimAssociatedInstance serves.
    bars_below_4g: int = 0
    msi: bool = True                  # MSI/MSI-X support
    line_interrupt: bool = True
    rmrr: bool = False                # requires reserved memory region
    acs: bool = True                  # ACS compatible up the hierarchy
    device_type: str = "PciExpressEndpoint"
    mitigation_driver: bool = False   # vendor security mitigation; without it Dismount needs -Force
    enabled: bool = True
    dismounted: bool = False
    assigned_vm: str | None = None    # VM name holding the device
    present: bool = True              # False: a ghost PnP entry (card no longer in the machine)
    # PCI class code (base class, subclass, programming interface): 0x030000 VGA, 0x030200 3D controller,
    # 0x040300 HD audio, 0x120000 processing accelerator. None: derived from pnp_class (Display/Media only).
    class_code: int | None = None

    @property
    def pci_class(self) -> int:
        if self.class_code is not None:
            return self.class_code
        return {"display": 0x030000, "media": 0x040300}.get(self.pnp_class.lower(), 0xFF0000)

    @property
    def hardware_ids(self) -> list[str]:
        """What the PCI bus driver reports as hardware ids ("Identifiers for PCI Devices", Microsoft
        hardware docs). Windows 10 moved some of the forms, among them the CC_ ones, to the compatible
        ids (same page); the model reports them there, the harder case for a reader."""
        full = self.instance_id.rsplit("\\", 1)[0]           # PCI\VEN_..&DEV_..&SUBSYS_..&REV_..
        return [full, full.rsplit("&", 1)[0]]

    @property
    def compatible_ids(self) -> list[str]:
        v, d = f"VEN_{self.vendor_id:04X}", f"DEV_{self.device_id:04X}"
        rev = self.instance_id.rsplit("\\", 1)[0].rsplit("&", 1)[-1]
        cc6, cc4 = f"CC_{self.pci_class:06X}", f"CC_{self.pci_class >> 8:04X}"
        return [f"PCI\\{v}&{d}&{rev}", f"PCI\\{v}&{d}", f"PCI\\{v}&{d}&{cc6}", f"PCI\\{v}&{d}&{cc4}",
                f"PCI\\{v}&{cc6}", f"PCI\\{v}&{cc4}", f"PCI\\{v}", f"PCI\\{cc6}", f"PCI\\{cc4}"]

    @property
    def mmio_bytes(self) -> int:
        return sum(self.bars)

    @property
    def holds_resources(self) -> bool:
        """Whether Windows lists memory ranges for it: Win32_PnPAllocatedResource gives "the resources that are
        in-use by a specific device" (its reference page), and a disabled (stopped), dismounted or absent device
        uses none. Microsoft's SurveyDDA.ps1 says so for a disabled one: "Device is Disabled, unable to check
        resource requirements" (it skips the MMIO query when ConfigManagerErrorCode is CM_PROB_DISABLED). A
        present device without a driver is modelled as still holding its ranges: not verified on a real host
        (docs/hyperv.md)."""
        return self.present and self.enabled and not self.dismounted

    @property
    def status(self) -> str:
        # Real outputs (tests/fixtures/real/hyperv/): a dismounted GPU shows "Unknown"; one whose host
        # driver was uninstalled shows "Error" with an empty Class, as does a disabled device.
        if self.dismounted or not self.present:
            return "Unknown"
        return "OK" if self.enabled and self.pnp_class else "Error"

    @property
    def dismounted_instance_id(self) -> str:
        # After dismount the device reappears under the PCIP enumerator.
        return "PCIP\\" + self.instance_id.split("\\", 1)[1]


# The device interface GPU-P registers for a partitionable GPU, and the reference string after it: Get-VMHostPartitionableGpu's
# Name is that interface's path, "\\?\PCI#VEN_..#4&23b96b75&0&0008#{064092b3-...}\GPUPARAV" in the real output
# tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt (instance part in lower case there).
GPU_P_INTERFACE = "{064092b3-625e-43bf-9eb5-dc845897dd59}"
GPU_P_REFERENCE = "GPUPARAV"


def partitionable_gpu_name(instance_id: str) -> str:
    """Get-VMHostPartitionableGpu's Name (= Add-VMGpuPartitionAdapter's -InstancePath) for a PnP instance id."""
    enumerator, hardware, instance = instance_id.split("\\", 2)
    return f"\\\\?\\{enumerator}#{hardware}#{instance.lower()}#{GPU_P_INTERFACE}\\{GPU_P_REFERENCE}"


@dataclass
class PartitionableGpu:
    """GPU partitioning (GPU-P) state of one host GPU, as Get-VMHostPartitionableGpu reports it.

    Property names: Msvm_PartitionableGpu (Microsoft's Hyper-V WMI reference) and the real output in
    tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt, where the driver reports the
    resources in its own units (1000000000 = the whole GPU, 2**64-1 = encode not limited), not in bytes."""
    instance_id: str                  # the PnpDevice's instance id
    valid_partition_counts: list[int] = field(default_factory=lambda: [32])
    partition_count: int = 32
    total_vram: int = 1000000000
    total_encode: int = 2**64 - 1
    total_decode: int = 1000000000
    total_compute: int = 1000000000


@dataclass
class GpuPartition:
    """A GPU partition adapter of a VM (Add-VMGpuPartitionAdapter -InstancePath)."""
    instance_path: str                # the partitionable GPU's Name
    adapter_id: str = ""
    # The -Min/-Max/-OptimalPartition{VRAM,Encode,Decode,Compute} values Add-VMGpuPartitionAdapter was given, by
    # parameter name; absent ones are the lab's defaults (get_vm_gpu_partition_adapter).
    settings: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.adapter_id:
            self.adapter_id = str(uuid.uuid4()).upper()


@dataclass
class Checkpoint:
    name: str
    snapshot_type: str = "Standard"


@dataclass
class VirtualMachine:
    name: str
    generation: int = 2
    state: str = "Off"
    memory_startup: int = 4 * 1024 ** 3
    dynamic_memory_enabled: bool = False
    automatic_stop_action: str = "Save"
    low_mmio: int = DEFAULT_LOW_MMIO
    high_mmio: int = DEFAULT_HIGH_MMIO
    guest_controlled_cache_types: bool = False
    checkpoints: list[Checkpoint] = field(default_factory=list)
    vm_id: str = ""
    gpu_partitions: list[GpuPartition] = field(default_factory=list)
    # Set-VM -Notes: "Specifies notes to be associated with the virtual machine" (Set-VM.md, a String in both
    # parameter sets); kept by Hyper-V as Msvm_VirtualSystemSettingData.Notes, returned by Get-VM as .Notes.
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.vm_id:
            self.vm_id = str(uuid.uuid4())


@dataclass
class Fault:
    cmdlet: str
    nth: int
    message: str
    seen: int = 0


@dataclass
class HostModel:
    name: str = "HV01"
    iov_support: bool = True
    iov_support_reasons: list[str] = field(default_factory=list)
    devices: list[PnpDevice] = field(default_factory=list)
    vms: list[VirtualMachine] = field(default_factory=list)
    partitionable: list[PartitionableGpu] = field(default_factory=list)
    # Win32_OperatingSystem's Caption, BuildNumber and ProductType (1 workstation, 2 domain controller, 3 server: the
    # class's reference page), what Get-CimInstance Win32_OperatingSystem reports. The lab's values are assumed: no
    # real output of a Windows Server 2025 host's Win32_OperatingSystem is in the corpus.
    os_caption: str = "Microsoft Windows Server 2025 Datacenter"
    os_build: str = "26100"
    os_product_type: int = 3

    def __post_init__(self) -> None:
        self.lock = threading.RLock()     # one script at a time mutates the host
        self.faults: list[Fault] = []
        self.calls: list[str] = []        # cmdlet names called, in order (for tests)

    # ---------------------------------------------------------------- faults
    def inject_fault(self, cmdlet: str, nth: int = 1, message: str | None = None) -> None:
        """Make the ``nth`` call (counted from now) of ``cmdlet`` fail with a terminating error."""
        self.faults.append(Fault(cmdlet.lower(), nth,
                                 message or f"Injected fault in {cmdlet} (call {nth})."))

    def clear_faults(self) -> None:
        self.faults.clear()

    def check_fault(self, cmdlet: str) -> None:
        self.calls.append(cmdlet)
        for f in list(self.faults):
            if f.cmdlet == cmdlet.lower():
                f.seen += 1
                if f.seen == f.nth:
                    self.faults.remove(f)
                    raise HyperVError(f.message, "InjectedFault," + cmdlet, "OperationStopped",
                                      "System.Exception", kind="terminating")

    # ---------------------------------------------------------------- lookup
    def vm(self, name: str) -> VirtualMachine | None:
        for v in self.vms:
            if v.name.lower() == name.lower():
                return v
        return None

    def device_by_instance(self, instance_id: str) -> PnpDevice | None:
        for d in self.devices:
            if d.instance_id.lower() == instance_id.lower() or (
                    d.dismounted and d.dismounted_instance_id.lower() == instance_id.lower()):
                return d
        return None

    def device_by_location(self, path: str) -> PnpDevice | None:
        for d in self.devices:
            if d.location_path.lower() == path.lower():
                return d
        return None

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "iov_support": self.iov_support,
                "iov_support_reasons": list(self.iov_support_reasons),
                "devices": [asdict(d) for d in self.devices],
                "vms": [asdict(v) for v in self.vms],
                "partitionable": [asdict(p) for p in self.partitionable],
                "os_caption": self.os_caption, "os_build": self.os_build, "os_product_type": self.os_product_type}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HostModel":
        devs = [PnpDevice(**_only(PnpDevice, d)) for d in data.get("devices", [])]
        vms = []
        for v in data.get("vms", []):
            v = dict(v)
            v["checkpoints"] = [Checkpoint(**c) for c in v.get("checkpoints", [])]
            v["gpu_partitions"] = [GpuPartition(**_only(GpuPartition, g)) for g in v.get("gpu_partitions", [])]
            vms.append(VirtualMachine(**_only(VirtualMachine, v)))
        return cls(name=data.get("name", "HV01"), iov_support=data.get("iov_support", True),
                   iov_support_reasons=list(data.get("iov_support_reasons", [])),
                   devices=devs, vms=vms,
                   partitionable=[PartitionableGpu(**_only(PartitionableGpu, p))
                                  for p in data.get("partitionable", [])],
                   **{k: data[k] for k in ("os_caption", "os_build", "os_product_type") if k in data})

    @classmethod
    def from_json(cls, text: str) -> "HostModel":
        return cls.from_dict(json.loads(text))

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.to_dict())


def _only(klass: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(klass)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {klass.__name__} fields in JSON: {sorted(unknown)}")
    return d
