"""GPU shares: a part of a physical GPU given to a VM, beside the whole-GPU assignment.

One neutral vocabulary for what each platform calls it: a mediated device (mdev) of an NVIDIA vGPU type or Intel
GVT-g type on KVM, a vGPU profile on ESXi, a GPU partition on Hyper-V, an SR-IOV virtual function. A physical GPU
*offers* share types (each with its name, framebuffer and how many instances still fit) and *holds* shares, each
held by a VM or by none (created, not yet given).
"""

from __future__ import annotations

import re
from enum import Enum

from gpupass.core.domain.pci import PciAddress
from gpupass.core.records import record

# The operations of a share request (CheckContext.operation, rule registration), beside "assign" and "release" of a
# whole GPU. Rules registered for "assign" (IOMMU group, MMIO window, firmware) do not run for a share: the host's
# vendor driver keeps the card, and the VM gets a virtual device the driver presents.
ASSIGN_SHARE = "assign-share"
RELEASE_SHARE = "release-share"


class ShareMode(str, Enum):
    # Linux mediated device: the vendor driver on the host (nvidia, i915) creates a virtual PCI device per share.
    MDEV = "mdev"
    # ESXi: a VirtualPCIPassthrough device with a vmiop backing naming a vGPU profile.
    VGPU_PROFILE = "vgpu-profile"
    # Hyper-V GPU partitioning (GPU-P).
    GPU_PARTITION = "gpu-partition"
    # A PCI SR-IOV virtual function of the GPU, passed through like a whole device.
    SRIOV_VF = "sriov-vf"
    # An NVIDIA vGPU on an SR-IOV virtual function: the vGPU manager (vGPU 17+, Ada/Hopper/Blackwell on KVM) sets the
    # VF's vGPU type in its sysfs (nvidia/current_vgpu_type) instead of creating a mediated device, and the VM gets the
    # VF as a PCI device.
    VF_VGPU = "vf-vgpu"


@record(frozen=True)
class ShareType:
    """A kind of share the host's driver can create on one physical GPU (an mdev type, a vGPU profile)."""

    id: str
    name: str
    mode: ShareMode
    # How many more the GPU can take now (libvirt availableInstances, mdev sysfs available_instances); None when
    # the platform does not say.
    available: int | None = None
    max_instances: int | None = None
    framebuffer_bytes: int | None = None
    description: str = ""

    def answers_to(self, text: str) -> bool:
        """Whether the user's name for a type means this one: its id (`nvidia-46`, `grid_p40-1q`), its name
        (`GRID P40-1Q`) or the profile name without the vendor's product prefix (`P40-1Q`), in any case."""
        wanted = text.strip().lower()
        return wanted in (self.id.lower(), self.name.lower()) or (
            bool(neutral_profile(wanted)) and neutral_profile(wanted) in (neutral_profile(self.id),
                                                                           neutral_profile(self.name)))


# NVIDIA names a vGPU profile "GRID P40-1Q" in the mdev type's name (`mdevctl types`, tests/fixtures/real/sharing)
# and "grid_p40-1q" on ESXi (vSphere's profile strings, NVIDIA vGPU user guide "vGPU types"), newer ones without
# "GRID" ("NVIDIA A100-4C"). The neutral profile is what follows that prefix: "p40-1q", the same on every platform.
_PROFILE_PREFIX = r"^(?:grid|nvidia)[ _]+"  # compiled on first use (pci.py's _ADDRESS says why)


def neutral_profile(name: str) -> str:
    """A vGPU profile's name without its product prefix, lower case (`GRID P40-1Q` -> `p40-1q`); "" for a name
    that is no vendor profile (an mdev type id such as `nvidia-46`, a partition size)."""
    lowered = name.strip().lower()
    stripped = re.sub(_PROFILE_PREFIX, "", lowered)
    return stripped if stripped != lowered or re.fullmatch(r"[a-z0-9]+-(?:\d+-)?\d+[a-z]+", stripped) else ""


# SR-IOV: a physical function (PF) offers one share type, its virtual functions (VFs). Each VF the host has enabled
# is a share, free or held by the VM whose definition has it; a VM gets a VF as a PCI device of its own, claimed
# like a whole GPU (AMD MxGPU, Intel Data Center GPU Flex). The host's admin enables VFs (sysfs `sriov_numvfs`,
# or a vendor tool); gpupass does not: the kernel refuses to enable more while any are enabled ("%d VFs already
# enabled. Disable before enabling %d VFs", -EBUSY, Linux drivers/pci/iov.c, sriov_numvfs_store), and disabling
# them removes every VF, held or not. So the type's `available` (more the driver can create now) is 0, and the
# room is its free VFs.
SRIOV_VF_TYPE = "sriov-vf"


def virtual_function_type(total: int | None, enabled: int) -> ShareType:
    """The share type of an SR-IOV PF: `total` VFs the device supports (None: not reported), `enabled` now."""
    return ShareType(
        id=SRIOV_VF_TYPE, name="SR-IOV virtual function", mode=ShareMode.SRIOV_VF, available=0,
        max_instances=total,
        description=f"{enabled} of {total if total is not None else 'an unreported number of'} virtual functions "
                    "enabled by the host; each is given to one VM as a PCI device",
    )


# NVIDIA vGPU types come in two kinds (NVIDIA vGPU user guide; NVIDIA AI Enterprise "Configuring a GPU for
# MIG-Backed vGPUs"): time-sliced vGPUs share the whole GPU over time; MIG-backed vGPUs each run on a GPU instance of
# a GPU in MIG mode. A MIG-backed type names its GPU instance's compute slices between the board and the framebuffer:
# "NVIDIA H200X-1-18C" (1 slice, 18 GB) beside the time-sliced "NVIDIA H200X-141C" on the same card (a real
# creatable_vgpu_types, NVIDIA kubevirt-gpu-device-plugin README; MIG device names count a GPU instance's compute
# slices, NVIDIA MIG user guide, "MIG Device Names"). gpupass reads the kind from the name that way (an assumed
# reading of NVIDIA's names, checked against that output).
_MIG_BACKED_PROFILE = r"[a-z0-9]+-\d+-\d+[a-z]+\d*"


def mig_backed(share_type: ShareType) -> bool | None:
    """True for a MIG-backed NVIDIA vGPU type, False for a time-sliced one, None for a type that is no vGPU profile."""
    profile = neutral_profile(share_type.name) or neutral_profile(share_type.id)
    if not profile:
        return None
    return bool(re.fullmatch(_MIG_BACKED_PROFILE, profile))


@record(frozen=True)
class Share:
    """One share that exists on a physical GPU."""

    id: str
    type_id: str
    mode: ShareMode
    # The VM whose definition holds it; None for a share created on the host but given to no VM.
    holder: str | None = None
    # Why the share cannot be given as it is, in words with the command that settles it, or "" for a usable one: a
    # KVM mediated device defined on the host but not started, or one a stopped gpupass run was creating or removing
    # for a VM (backends/kvm/mdevstate.py). Never free, whoever holds it.
    unfinished: str = ""


@record(frozen=True)
class Sharing:
    """What one physical GPU offers for sharing and the shares it holds; empty for a GPU that cannot share."""

    types: tuple[ShareType, ...] = ()
    shares: tuple[Share, ...] = ()
    # True where the vendor allows shares of one type only on the GPU at a time: NVIDIA time-sliced vGPU ("all
    # vGPUs resident on a physical GPU must be of the same type", NVIDIA Virtual GPU Software User Guide, "Valid
    # Virtual GPU Configurations on a Single GPU", equal-size mode), Hyper-V GPU-P (PartitionCount equal partitions,
    # Set-VMHostPartitionableGpu). Set by the backend, which knows the driver.
    one_type_at_a_time: bool = False
    # MIG mode of the physical GPU as its driver reports it now (nvidia-smi "MIG Mode / Current"); None where the
    # platform does not say, or for a GPU without MIG.
    mig_mode: bool | None = None
    # Why some of the GPU's sharing is not listed, in words, where the platform cannot read it from here (KVM:
    # NVIDIA's per-VF vGPU types are in the host's sysfs); "" when nothing is left out.
    unread: str = ""
    # What the host must change before this GPU can give `types`, in the platform's words, or "" when nothing: an ESXi
    # GPU in shared (vSGA) graphics mode offers vGPU profiles only once it is in shared direct mode
    # (backends/esxi/vgpu.py). The types are then those it offers after the change. A plan that gives such a share
    # includes the change only when the request allows it (AssignOptions.allow_host_sharing_change).
    host_change: str = ""

    @property
    def offered(self) -> bool:
        return bool(self.types)

    @property
    def in_use(self) -> bool:
        return bool(self.shares)

    @property
    def modes(self) -> tuple[ShareMode, ...]:
        return tuple(dict.fromkeys(t.mode for t in self.types))

    @property
    def holders(self) -> tuple[str, ...]:
        return tuple(sorted({s.holder for s in self.shares if s.holder}))

    def type_named(self, type_id: str) -> ShareType | None:
        return next((t for t in self.types if t.id == type_id), None)

    def types_answering(self, text: str) -> tuple[ShareType, ...]:
        exact = tuple(t for t in self.types if t.id == text)
        return exact or tuple(t for t in self.types if t.answers_to(text))

    def held_by(self, vm: str) -> tuple[Share, ...]:
        return tuple(s for s in self.shares if s.holder == vm)

    def other_types_held(self, share_type: ShareType) -> tuple[str, ...]:
        """The types of shares the GPU holds, of the same mode as `share_type` but another type: what the one-type
        rule weighs (an NVIDIA card's SR-IOV VFs are shares of another mode beside its vGPU types)."""
        return tuple(sorted({s.type_id for s in self.shares if s.mode is share_type.mode and s.type_id != share_type.id}))

    def free(self, type_id: str) -> tuple[Share, ...]:
        """Shares of the type that exist on the GPU, no VM holds and nothing left unfinished (a mediated device created
        ahead and started)."""
        return tuple(sorted((s for s in self.shares if s.holder is None and s.type_id == type_id and not s.unfinished),
                            key=lambda s: s.id))


@record(frozen=True)
class ShareChange:
    """One share a request gives to a VM or takes back, on one physical GPU."""

    gpu: PciAddress
    type: ShareType
    # The share the VM holds: what a release takes back, or what makes an assign already done.
    share: Share | None = None
    location: str = ""
