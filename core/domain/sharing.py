"""GPU shares: a part of a physical GPU given to a VM, beside the whole-GPU assignment.

One neutral vocabulary for what each platform calls it: a mediated device (mdev) of an NVIDIA vGPU type or Intel
GVT-g type on KVM, a vGPU profile on ESXi, a GPU partition on Hyper-V, an SR-IOV virtual function. A physical GPU
*offers* share types (each with its name, framebuffer and how many instances still fit) and *holds* shares, each
held by a VM or by none (created, not yet given).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ShareMode(str, Enum):
    # Linux mediated device: the vendor driver on the host (nvidia, i915) creates a virtual PCI device per share.
    MDEV = "mdev"
    # ESXi: a VirtualPCIPassthrough device with a vmiop backing naming a vGPU profile.
    VGPU_PROFILE = "vgpu-profile"
    # Hyper-V GPU partitioning (GPU-P).
    GPU_PARTITION = "gpu-partition"
    # A PCI SR-IOV virtual function of the GPU, passed through like a whole device.
    SRIOV_VF = "sriov-vf"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Share:
    """One share that exists on a physical GPU."""

    id: str
    type_id: str
    mode: ShareMode
    # The VM whose definition holds it; None for a share created on the host but given to no VM.
    holder: str | None = None


@dataclass(frozen=True)
class Sharing:
    """What one physical GPU offers for sharing and the shares it holds; empty for a GPU that cannot share."""

    types: tuple[ShareType, ...] = ()
    shares: tuple[Share, ...] = ()

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
