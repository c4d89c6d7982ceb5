"""Hyper-V GPU partitioning (GPU-P) as gpupass's neutral sharing model.

Get-VMHostPartitionableGpu (Msvm_PartitionableGpu) reports, per partitionable GPU, its Name (the path of the
device interface GPU-P registers on the GPU, e.g. ``\\\\?\\PCI#VEN_10DE&DEV_2504&...#4&23b96b75&0&0008#{064092b3-...}
\\GPUPARAV`` in the real output tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt),
ValidPartitionCounts and PartitionCount. Add-VMGpuPartitionAdapter's -InstancePath is that Name (its cmdlet page:
"This value can be obtained from the "Name" property of the command Get-VMHostPartitionableGpu"), and each VM's
Get-VMGpuPartitionAdapter reports it as InstancePath.

Mapping (docs/sharing.md): the GPU is split into PartitionCount equal partitions; Set-VMHostPartitionableGpu
-PartitionCount picks another count from ValidPartitionCounts. So each valid count is a share type
(``partitions-N``: 1/N of the GPU, at most N, the neutral "size" of a partition); the configured count's free
instances are N less the adapters that name the GPU, another count is given after a host step that changes the
count (see sharing_of). Framebuffer is not known: TotalVRAM is in the driver's units (1000000000 for a whole GPU in
the real output), not bytes. A partition's Min/Max/Optimal VRAM, encode, decode and compute are Hyper-V-only
settings of the request (SETTINGS), checked against the GPU's own (facts_of).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing
from gpupass.core.errors import UsageError

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


# Msvm_PartitionableGpu (Microsoft's Hyper-V WMI reference) reports, per resource, the GPU's Total and Available
# amounts and a partition's Min/Max/Optimal amounts ("The minimum amount of VRAM which will appear in the GPU
# partition", Msvm_GpuPartitionSettingData); Add-/Set-VMGpuPartitionAdapter take -Min/-Max/-OptimalPartition<R> for
# the same four resources (their pages, winserver2022-ps), "defined by the manufacturer's driver".
RESOURCES = ("VRAM", "Encode", "Decode", "Compute")
LEVELS = ("Min", "Max", "Optimal")
# The Add-VMGpuPartitionAdapter parameters a share request may set (AssignOptions.ex_share_options), by their name.
SETTINGS = tuple(f"{level}Partition{what}" for what in RESOURCES for level in LEVELS)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def counts_of(record: Mapping[str, Any]) -> tuple[list[int], int | None]:
    """ValidPartitionCounts (one number when ConvertTo-Json met a single value) and PartitionCount."""
    counts = record.get("ValidPartitionCounts")
    counts = [counts] if isinstance(counts, int) else list(counts or [])
    current = _int(record.get("PartitionCount"))
    return sorted({int(c) for c in counts} | ({current} if current else set())), current


def facts_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the host says about one partitionable GPU, for `gpus --json` (extra.gpu_partitioning) and the rules:
    the counts, and per resource its total, what is available and a partition's min/max/optimal, in the driver's own
    units (a whole GPU's VRAM is 1000000000 in the real output: not bytes)."""
    counts, current = counts_of(record)
    resources = {what.lower(): {"total": _int(record.get(f"Total{what}")),
                                "available": _int(record.get(f"Available{what}")),
                                **{level.lower(): _int(record.get(f"{level}Partition{what}")) for level in LEVELS}}
                 for what in RESOURCES}
    live = record.get("SupportsIncomingLiveMigration")
    name = str(record.get("Name") or "")
    return {"instance_path": name, "valid_partition_counts": counts,
            "partition_count": current, "resources": resources,
            "supports_incoming_live_migration": live if isinstance(live, bool) else None,
            "paravirtualization": is_paravirtualization(name)}


# GPU paravirtualization (GPU-PV, "the same technology that is used in WSL2, and Windows Sandbox": Easy-GPU-PV's
# README) and GPU partitioning (GPU-P, SR-IOV partitions: Microsoft's "GPU partitioning" page) are listed by the same
# cmdlet. "A GPU-PV adapter is recognized by having GPUPARAV in the device instance name: GPU-P adapter will not have
# this substring"; GPU-PV "always shares full GPU with a VM" and "Resource sharing parameters are used only in case of
# GPU-P" (Easy-GPU-PV issue #49, a comment, not Microsoft's docs). The published outputs agree: the ExHyperV Windows
# host's Name ends in \GPUPARAV, the Names in Microsoft's Windows Server samples do not (tests/fixtures/real/sharing).
PARAVIRTUAL_REFERENCE = "\\GPUPARAV"


def is_paravirtualization(name: str) -> bool:
    return name.upper().endswith(PARAVIRTUAL_REFERENCE.upper())


def sharing_of(record: Mapping[str, Any], held_by: Iterable[str]) -> Sharing:
    """A partitionable GPU (the inventory's Get-VMHostPartitionableGpu record) and the VMs whose adapters name it.

    The count set now has N less the partitions held free. Another valid count can be given only after
    Set-VMHostPartitionableGpu -PartitionCount, which gpupass plans as a host step while no VM holds a partition of
    the GPU (Microsoft's "Partition and assign GPUs to a virtual machine": Windows Admin Center refuses a GPU with an
    assigned partition, "You must first unassign the partition from the VM"): N free then; unknown (None) while
    partitions are held, as nothing says what the count will be once they are given back."""
    counts, current = counts_of(record)
    holders = list(held_by)
    types = []
    for n in counts:
        now = n == current
        types.append(ShareType(
            id=type_id(n), name=f"1/{n} of the GPU", mode=ShareMode.GPU_PARTITION,
            available=max(n - len(holders), 0) if now else (None if holders else n), max_instances=n,
            description=("the partition count set now" if now else
                         f"after Set-VMHostPartitionableGpu -PartitionCount {n} (a host step gpupass plans while no "
                         "VM holds a partition of this GPU)")))
    shares = tuple(Share(id=f"{vm}/gpu-partition-{i}", type_id=type_id(int(current)) if current else "",
                         mode=ShareMode.GPU_PARTITION, holder=vm)
                   for vm in sorted(set(holders)) for i in range(1, holders.count(vm) + 1))
    # Equal partitions, PartitionCount of them: one size at a time on a GPU.
    return Sharing(tuple(types), shares, one_type_at_a_time=True)


# GPU partitioning as Microsoft documents it for the host OS: "Applies to: Windows Server 2025" and "You must have
# Windows Server 2025 installed on the host server" (MicrosoftDocs/windowsserverdocs,
# WindowsServerDocs/virtualization/hyper-v/gpu-partitioning.md and partition-assign-vm-gpu.md), and Azure Stack HCI
# versions 22H2 and 23H2 (the same pages' Azure Stack HCI pivot, 2023). The cmdlets are in the winserver2022-ps
# docset too, and community tools use them on Windows 10/11 (Easy-GPU-PV), but Microsoft documents GPU-P only there.
# Matched in Win32_OperatingSystem's Caption; that the caption names the product so is assumed (no real output of
# either OS's caption is in the corpus).
DOCUMENTED_HOSTS = ("Windows Server 2025", "Azure Stack HCI", "Azure Local")


def os_documented(caption: str) -> bool:
    return any(name.lower() in caption.lower() for name in DOCUMENTED_HOSTS)


def request_settings(options: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """The request's Add-VMGpuPartitionAdapter settings (AssignOptions.ex_share_options) as (parameter name, value),
    names as the cmdlet spells them (any case accepted), in SETTINGS order; a value that is no UInt64 is refused."""
    by_name = {name.lower(): name for name in SETTINGS}
    out = {}
    for name, text in options.items():
        canonical = by_name.get(name.lower())
        if canonical is None:
            raise UsageError(f"share option {name!r} is not supported on hyperv", remedy=f"hyperv takes {', '.join(SETTINGS)}")
        value = str(text).strip()
        if not (value.isascii() and value.isdigit()) or int(value) > 2**64 - 1:
            raise UsageError(f"share option {canonical}={text!r} is not a whole number from 0 to 18446744073709551615 "
                             "(Add-VMGpuPartitionAdapter takes a UInt64)",
                             remedy="give a number in the units Get-VMHostPartitionableGpu reports "
                                    "(`gpupass gpus HOST --json`: extra.gpu_partitioning)")
        out[canonical] = int(value)
    return tuple((name, out[name]) for name in SETTINGS if name in out)
