"""Hyper-V GPU partitioning (GPU-P) as gpupass's neutral sharing model (read only).

Get-VMHostPartitionableGpu (Msvm_PartitionableGpu) reports, per partitionable GPU, its Name (the path of the
device interface GPU-P registers on the GPU, e.g. ``\\\\?\\PCI#VEN_10DE&DEV_2504&...#4&23b96b75&0&0008#{064092b3-...}
\\GPUPARAV`` in the real output tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt),
ValidPartitionCounts and PartitionCount. Add-VMGpuPartitionAdapter's -InstancePath is that Name (its cmdlet page:
"This value can be obtained from the "Name" property of the command Get-VMHostPartitionableGpu"), and each VM's
Get-VMGpuPartitionAdapter reports it as InstancePath.

Mapping (docs/sharing.md): the GPU is split into PartitionCount equal partitions; Set-VMHostPartitionableGpu
-PartitionCount picks another count from ValidPartitionCounts. So each valid count is a share type
(``partitions-N``: 1/N of the GPU, at most N); only the configured count can be given out now, and its free
instances are N less the adapters that name the GPU. Other counts say nothing about availability (None): the
platform does not say whether the count can change while partitions are held. Framebuffer is not known:
TotalVRAM is in the driver's units (1000000000 for a whole GPU in the real output), not bytes.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing

# \\?\<enumerator>#<hardware id>#<instance>#{interface class GUID}\<reference string>
_NAME = re.compile(r"^\\\\\?\\(?P<enum>[^#\\]+)#(?P<hardware>[^#\\]+)#(?P<instance>[^#\\]+)#\{[0-9A-Fa-f-]+\}(\\.*)?$")


def instance_id_of(name: str) -> str | None:
    """The PnP instance id (``PCI\\VEN_..\\4&..``, upper case) a partitionable GPU's Name points to; None when the
    Name is not a device interface path."""
    m = _NAME.match(name or "")
    if m is None:
        return None
    return "\\".join((m["enum"], m["hardware"], m["instance"])).upper()


def type_id(count: int) -> str:
    return f"partitions-{count}"


def sharing_of(record: Mapping[str, Any], held_by: Iterable[str]) -> Sharing:
    """A partitionable GPU (the inventory's ``{Name, Counts, Count}``) and the VMs whose adapters name it."""
    counts = record.get("Counts")
    counts = [counts] if isinstance(counts, int) else list(counts or [])
    current = record.get("Count")
    holders = list(held_by)
    types = []
    for n in sorted({int(c) for c in counts} | ({int(current)} if current else set())):
        now = n == current
        types.append(ShareType(
            id=type_id(n), name=f"1/{n} of the GPU", mode=ShareMode.GPU_PARTITION,
            available=max(n - len(holders), 0) if now else None, max_instances=n,
            description=("the partition count set now" if now else
                         f"after Set-VMHostPartitionableGpu -PartitionCount {n}")))
    shares = tuple(Share(id=f"{vm}/gpu-partition-{i}", type_id=type_id(int(current)) if current else "",
                         mode=ShareMode.GPU_PARTITION, holder=vm)
                   for vm in sorted(set(holders)) for i in range(1, holders.count(vm) + 1))
    # Equal partitions, PartitionCount of them: one size at a time on a GPU.
    return Sharing(tuple(types), shares, one_type_at_a_time=True)
