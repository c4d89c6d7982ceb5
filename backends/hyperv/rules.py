"""Preflight rules for Hyper-V DDA: the device checks of Microsoft's survey script and the VM settings DDA needs.

Covered by the core's own rules (this backend fills the facts they read): IovSupport off (`iommu-off`, from
Host.iommu_enabled and IovSupportReasons), VM not off (`vm-not-off`), high MMIO too small
(`mmio-window-resized`: gpupass sets it to the need plus the 512 MB default), BIOS firmware with large BARs
(`firmware-bios-large-bar`; Hyper-V cannot change it, so `hyperv-generation-1` adds the Hyper-V remedy).
"""
from __future__ import annotations

from typing import Iterable

from gpupass.core.domain.context import CheckContext
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
    page); gpupass does not change the host's count, so only the type of the count set now can be given."""
    for change in ctx.shares:
        gpu = next((g for g in ctx.gpus if g.address == change.gpu), None)
        if gpu is None:
            continue
        current = next((t for t in gpu.sharing.types if t.available is not None), None)
        if current is not None and change.share is None and change.type.id != current.id:
            yield blocker(
                "hyperv-partition-count",
                f"GPU {change.gpu} is split into {current.max_instances} partitions now; a {change.type.id} share "
                "needs the host's partition count changed",
                f"ask for {current.id}, or (with no partition held) run Set-VMHostPartitionableGpu -Name "
                f"{ps_quote(str(gpu.extra.get('partition_instance_path') or ''))} -PartitionCount "
                f"{change.type.max_instances} on the host first",
                subject=str(change.gpu),
            )


SHARE_RULES = (partition_count_set,)
