"""What a Hyper-V step carries out: one small frozen dataclass per kind of step (the `Step.payload`).

`HypervBackend.apply`, `undo` and `observe` choose their handler by the payload's type (functools'
singledispatchmethod), never by `Step.action`, which is only the step's label in text and --json output.
The VM settings below are {"stop_action", "low_mmio", "high_mmio", "guest_cache"}; the restore record itself
lives in the VM's notes (scripts.RECORD_BEGIN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Assign:
    """Run the assign script (Set-VM with the restore record in the VM's notes, Disable-PnpDevice,
    Dismount-VMHostAssignableDevice, Add-VMAssignableDevice) for the devices at location paths `paths` (PCI
    `addresses`) on VM `vm` (`vm_id`), with MMIO windows `low` and `high` bytes. `legacy`: the script records the
    settings an older gpupass kept on this workstation (state.LegacySettings), which the assign then forgets."""

    vm: str
    vm_id: str
    paths: tuple[str, ...]
    low: int
    high: int
    addresses: tuple[str, ...]
    legacy: bool = False


@dataclass(frozen=True)
class Release:
    """Run the release script for `paths` (PCI `addresses`) on VM `vm` (`vm_id`); the script restores the settings
    recorded in the VM's notes when it leaves the VM without devices (`legacy`: or, where the notes hold none, the
    record an older gpupass kept on this workstation). `current`: the VM's settings now, what an undo gives back."""

    vm: str
    vm_id: str
    paths: tuple[str, ...]
    addresses: tuple[str, ...]
    legacy: bool
    current: Mapping[str, Any]


@dataclass(frozen=True)
class FinishRelease:
    """Finish a release of VM `vm` (`vm_id`) that stopped half-way (scripts.finish_release_script): the devices at
    `paths` (PCI `addresses`), which its intent in the VM's restore record names and no VM holds, go back to the host
    (Mount-VMHostAssignableDevice where still dismounted, Enable-PnpDevice); `restore`: the VM holds no device, so its
    recorded settings are put back and the record removed (else only the intent is taken out of the record). `note`:
    what `status` said of the stopped release when planned (records.Unfinished.note), what a lost reply is read back
    against ("" : planned by an older gpupass, not known)."""

    vm: str
    vm_id: str
    paths: tuple[str, ...]
    addresses: tuple[str, ...]
    restore: bool
    note: str = ""


# -- GPU partitioning (GPU-P) shares --------------------------------------------------------------------------
@dataclass(frozen=True)
class AddPartition:
    """Add-VMGpuPartitionAdapter: one partition of the GPU named `instance_path` to VM `vm`, with the
    -Min/-Max/-OptimalPartition<R> `settings` asked for ((parameter name, value), partitioning.SETTINGS). `held`: how
    many partitions of that GPU the VM held when planned, what a lost reply is read back against (None: not known)."""

    vm: str
    instance_path: str
    settings: tuple[tuple[str, int], ...] = ()
    held: int | None = None


@dataclass(frozen=True)
class SetPartitionCount:
    """Set-VMHostPartitionableGpu -PartitionCount `count` on the GPU named `instance_path`, whose count is `previous`
    when the plan was made; undone by setting `previous` back. `vm`: the VM the partition is for, whose notes hold the
    change's intent until the partition is added (scripts.COUNT_BEGIN; "": planned by an older gpupass, none)."""

    instance_path: str
    count: int
    previous: int
    vm: str = ""


@dataclass(frozen=True)
class FinishCountChange:
    """Take back a partition count change an assign of a partition to VM `vm` left when it stopped before the add
    (records.count_changes): the GPU `instance_path` back from `changed_to` to `back_to` where no VM holds a partition
    of it, and the intent out of the VM's notes (scripts.count_set_back_script, not strict). `seen`: the GPU's count when
    planned, what a lost reply is read back against (None: not known)."""

    vm: str
    instance_path: str
    back_to: int
    changed_to: int
    seen: int | None = None


@dataclass(frozen=True)
class RemovePartitions:
    """Remove-VMGpuPartitionAdapter: `count` of VM `vm`'s partitions of the GPU named `instance_path`. `held`: how
    many the VM held when planned, what a lost reply is read back against (None: not known). A release of several GPUs'
    partitions (one step each): `intent`, on its first step, the instance paths of all of them, written into the VM's
    notes before the first removal (scripts.RELEASE_BEGIN); `ends_release`, on its last step (or on a release of a VM
    whose notes hold such an intent), takes the intent out once the VM holds none of them."""

    vm: str
    instance_path: str
    count: int
    held: int | None = None
    intent: tuple[str, ...] = ()
    ends_release: bool = False
