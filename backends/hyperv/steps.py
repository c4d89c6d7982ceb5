"""What a Hyper-V step carries out: one small frozen dataclass per kind of step (the `Step.payload`).

`HypervBackend.apply`, `undo` and `observe` choose their handler by the payload's type (functools'
singledispatchmethod), never by `Step.action`, which is only the step's label in text and --json output.
The VM settings below are restore records in SettingsStore's format (backends/hyperv/state.py):
{"stop_action", "low_mmio", "high_mmio", "guest_cache"}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Assign:
    """Run the assign script (Set-VM, Disable-PnpDevice, Dismount-VMHostAssignableDevice,
    Add-VMAssignableDevice) for the devices at location paths `paths` (PCI `addresses`) on VM `vm` (`vm_id`),
    with MMIO windows `low` and `high` bytes. `previous`: the VM's settings when the plan was made, recorded
    before the script runs so that a release can restore them even if the reply is lost."""

    vm: str
    vm_id: str
    paths: tuple[str, ...]
    low: int
    high: int
    addresses: tuple[str, ...]
    previous: Mapping[str, Any]


@dataclass(frozen=True)
class Release:
    """Run the release script for `paths` on VM `vm` (`vm_id`), restoring `previous` (the record of the VM's
    settings before gpupass assigned; None: leave them). `current`: its settings now, what an undo gives back."""

    vm: str
    vm_id: str
    paths: tuple[str, ...]
    previous: Mapping[str, Any] | None
    current: Mapping[str, Any]


# -- GPU partitioning (GPU-P) shares --------------------------------------------------------------------------
@dataclass(frozen=True)
class AddPartition:
    """Add-VMGpuPartitionAdapter: one partition of the GPU named `instance_path` to VM `vm`."""

    vm: str
    instance_path: str


@dataclass(frozen=True)
class RemovePartitions:
    """Remove-VMGpuPartitionAdapter: `count` of VM `vm`'s partitions of the GPU named `instance_path`."""

    vm: str
    instance_path: str
    count: int
