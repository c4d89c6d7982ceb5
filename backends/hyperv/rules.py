"""Preflight rules for Hyper-V DDA: the device checks of Microsoft's survey script and the VM settings DDA needs.

Covered by the core's own rules (this backend fills the facts they read): IovSupport off (`iommu-off`, from
Host.iommu_enabled and IovSupportReasons), VM not off (`vm-not-off`), high MMIO too small
(`mmio-window-resized`: gpupass sets it to the need plus the 512 MB default), BIOS firmware with large BARs
(`firmware-bios-large-bar`; Hyper-V cannot change it, so `hyperv-generation-1` adds the Hyper-V remedy).
"""
from __future__ import annotations

from typing import Iterable

from gpupass.core.domain.context import CheckContext
from gpupass.backends.hyperv import partitioning
from gpupass.backends.hyperv.scripts import ps_quote
from gpupass.core.domain.findings import Finding, blocker, info, warning
from gpupass.core.domain.inventory import Vm

_DEVICE_CHECKS = (
    ("rmrr", True, "hyperv-rmrr",
     "{what} needs a reserved memory region (RMRR) set by the firmware; Hyper-V refuses to assign it",
     "use another slot or card; some servers can turn the RMRR off in their firmware (e.g. HPE's "
     "conrep 'Intel_RMRR_Exclusion')"),
    ("acs", False, "hyperv-no-acs",
     "{what} has no ACS up the PCIe hierarchy: its traffic could reach other devices, so it cannot be isolated",
     "move the card to a CPU-attached slot whose root port supports ACS"),
    ("express_endpoint", False, "hyperv-not-express-endpoint",
     "{what} is not a PCI Express endpoint (legacy PCI or a bridge): DDA assigns only PCIe endpoints",
     "use a PCI Express card"),
    ("msi", False, "hyperv-no-msi",
     "{what} supports only line-based interrupts; DDA needs MSI or MSI-X",
     "use a device (or driver) with MSI/MSI-X support"),
)


def device_survey(ctx: CheckContext) -> Iterable[Finding]:
    for gpu in ctx.gpus:
        checked = [(f"GPU {gpu.address}", gpu.extra.get("survey") or {})]
        if ctx.include_companions:
            checked += [(f"{address} (companion of GPU {gpu.address})", flags)
                        for address, flags in (gpu.extra.get("companion_survey") or {}).items()]
        for what, flags in checked:
            for key, bad, code, message, remedy in _DEVICE_CHECKS:
                if flags.get(key) is bad:
                    yield blocker(code, message.format(what=what), remedy, subject=str(gpu.address))


def _vm_command(vm: Vm) -> str:
    """Set-VM for exactly this VM: by its id (unique, no wildcards), as -Name/-VMName would read `gpu[1]` as a
    pattern; by exact name only when the id is unknown."""
    if vm.id:
        return f"Set-VM -VM (Get-VM -Id {ps_quote(vm.id)})"
    return f"Get-VM | Where-Object Name -eq {ps_quote(vm.name)} | Set-VM"


def dynamic_memory(ctx: CheckContext) -> Iterable[Finding]:
    if ctx.vm.dynamic_memory:
        yield blocker("hyperv-dynamic-memory",
                      f"VM '{ctx.vm.name}' uses dynamic memory; DDA needs static memory",
                      f"{_vm_command(ctx.vm)} -StaticMemory (with the VM off)")


def stop_action(ctx: CheckContext) -> Iterable[Finding]:
    action = ctx.vm.stop_action
    if action and action != "TurnOff":
        yield info("hyperv-stop-action",
                   f"VM '{ctx.vm.name}' has AutomaticStopAction {action}; a VM with an assigned device cannot be "
                   "saved, so the plan sets it to TurnOff (a release restores it)")


def generation(ctx: CheckContext) -> Iterable[Finding]:
    need = ctx.need
    if ctx.vm.settings.get("generation") == 1 and need is not None and need.is_large:
        yield blocker("hyperv-generation-1",
                      f"VM '{ctx.vm.name}' is a Generation 1 (BIOS) VM; its BIOS cannot map the GPUs' large BARs, "
                      "and Hyper-V cannot change a VM's generation",
                      "create a Generation 2 VM (UEFI) for the GPU and move the guest to it")


def checkpoints(ctx: CheckContext) -> Iterable[Finding]:
    count = ctx.vm.snapshots
    if count:
        kinds = ", ".join(sorted({str(t) for t in ctx.vm.settings.get("checkpoint_types") or []})) or "unknown"
        yield warning("hyperv-checkpoints",
                      f"VM '{ctx.vm.name}' has {count} checkpoint(s) ({kinds}); they were taken without the device, "
                      "and a VM holding an assigned device cannot take checkpoints that save its state",
                      "delete checkpoints you no longer need; set the VM to production checkpoints "
                      "(Set-VM -CheckpointType ProductionOnly)")


RULES = (device_survey, dynamic_memory, stop_action, generation, checkpoints)


def partition_count_set(ctx: CheckContext) -> Iterable[Finding]:
    """A partition is 1/PartitionCount of the GPU, the count set with Set-VMHostPartitionableGpu -PartitionCount (its
    page) to "one of the supported counts from the ValidPartitionCounts value" (Microsoft's "Partition and assign GPUs
    to a virtual machine", "Configure GPU partition count"). gpupass plans that change as a host step, with its undo,
    only while no VM holds a partition of the GPU: the same article documents Windows Admin Center's error for a GPU
    whose partition "is already assigned to a VM" ("You must first unassign the partition from the VM")."""
    for change in ctx.shares:
        gpu = next((g for g in ctx.gpus if g.address == change.gpu), None)
        if gpu is None or change.share is not None:
            continue
        current = (gpu.extra.get("gpu_partitioning") or {}).get("partition_count")
        wanted = change.type.max_instances
        if not current or not wanted or wanted == current:
            continue
        holders = gpu.sharing.holders
        if holders:
            yield blocker(
                "hyperv-partition-count",
                f"GPU {change.gpu} is split into {current} partitions now and VM(s) {', '.join(holders)} hold "
                f"partitions of it; a {change.type.id} share needs the host's partition count changed, which Microsoft "
                "documents only with no partition assigned",
                f"ask for partitions-{current}, or release the partitions of {', '.join(holders)} first",
                subject=str(change.gpu),
            )
        else:
            yield info(
                "hyperv-partition-count-change",
                f"GPU {change.gpu} is split into {current} partitions now; the plan sets it to {wanted} "
                f"(Set-VMHostPartitionableGpu -PartitionCount {wanted}) before adding the partition, for every VM "
                "that takes a partition of this GPU later too; the undo sets it back",
                subject=str(change.gpu),
            )


def partition_settings_in_range(ctx: CheckContext) -> Iterable[Finding]:
    """Each Min/Max/OptimalPartition<R> asked for (Add-VMGpuPartitionAdapter's parameters: "The minimum VRAM ... supported
    by the host GPU. This is defined by the manufacturer's driver.") must lie between the GPU's own MinPartition<R> and
    MaxPartition<R>, as Get-VMHostPartitionableGpu reports them (Msvm_PartitionableGpu), and Min <= Optimal <= Max for
    each resource (Msvm_GpuPartitionSettingData: the minimum, optimal and maximum amount "which will appear in the GPU
    partition"). Whether Hyper-V itself refuses a value outside them is not documented: gpupass checks first."""
    settings = dict(_settings(ctx))
    if not settings:
        return
    for gpu in ctx.gpus:
        resources = (gpu.extra.get("gpu_partitioning") or {}).get("resources") or {}
        for what in partitioning.RESOURCES:
            limits = resources.get(what.lower()) or {}
            low, high = limits.get("min"), limits.get("max")
            asked = {level: settings[f"{level}Partition{what}"] for level in partitioning.LEVELS
                     if f"{level}Partition{what}" in settings}
            for level, value in asked.items():
                if low is None or high is None:
                    yield warning("hyperv-partition-setting-unchecked",
                                  f"GPU {gpu.address} does not report its MinPartition{what}/MaxPartition{what}: "
                                  f"{level}Partition{what} {value} cannot be checked", subject=str(gpu.address))
                elif not low <= value <= high:
                    yield blocker("hyperv-partition-setting",
                                  f"{level}Partition{what} {value} is outside what GPU {gpu.address} allows a "
                                  f"partition: {low} to {high} (Get-VMHostPartitionableGpu, the driver's units)",
                                  f"give a value from {low} to {high}", subject=str(gpu.address))
            order = [(level, asked[level]) for level in ("Min", "Optimal", "Max") if level in asked]
            for (a, x), (b, y) in zip(order, order[1:], strict=False):
                if x > y:
                    yield blocker("hyperv-partition-setting",
                                  f"{a}Partition{what} {x} is more than {b}Partition{what} {y}",
                                  f"give {a}Partition{what} <= {b}Partition{what}", subject=str(gpu.address))


def partitioning_os(ctx: CheckContext) -> Iterable[Finding]:
    """Microsoft documents GPU partitioning for Windows Server 2025 and Azure Stack HCI hosts (partitioning.py,
    DOCUMENTED_HOSTS): on another Windows the cmdlets may work (community tools use them on Windows 10/11), unsupported."""
    documented = ctx.facts.host.settings.get("gpu_partitioning_os_documented")
    if documented is False and ctx.operation == "assign-share":
        os_ = ctx.facts.host.settings.get("os") or {}
        yield warning("hyperv-gpu-partitioning-os",
                      f"the host runs {os_.get('caption')} (build {os_.get('build')}); Microsoft documents GPU "
                      "partitioning for Windows Server 2025 and Azure Stack HCI hosts only",
                      "use a Windows Server 2025 or Azure Stack HCI host for a supported setup")


def paravirtualization(ctx: CheckContext) -> Iterable[Finding]:
    """A GPU whose Get-VMHostPartitionableGpu Name ends in \\GPUPARAV is shared by GPU paravirtualization (GPU-PV), not
    split into SR-IOV partitions: each VM shares the whole GPU and resource settings are ignored (partitioning.py,
    is_paravirtualization, with its source)."""
    if ctx.operation != "assign-share":
        return
    for gpu in ctx.gpus:
        if (gpu.extra.get("gpu_partitioning") or {}).get("paravirtualization"):
            ignored = " and the partition settings asked for are ignored" if _settings(ctx) else ""
            yield warning("hyperv-gpu-paravirtualization",
                          f"GPU {gpu.address} is shared by GPU paravirtualization (GPU-PV: its name ends in "
                          f"\\GPUPARAV), not split into hardware partitions: the VM shares the whole GPU with the "
                          f"host and other VMs{ignored} (Easy-GPU-PV issue #49)",
                          "for isolated partitions use a GPU and host that offer GPU partitioning (SR-IOV: Windows "
                          "Server 2025 or Azure Stack HCI with a supported GPU)", subject=str(gpu.address))


def _settings(ctx: CheckContext) -> tuple[tuple[str, int], ...]:
    return partitioning.request_settings(ctx.assign_options.ex_share_options) if ctx.operation == "assign-share" else ()


SHARE_RULES = (partition_count_set, partition_settings_in_range, partitioning_os, paravirtualization)
