"""Preflight rules that need ESXi / vCenter facts (registered for platform "esxi")."""

from __future__ import annotations

from typing import Any, Iterable

from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding, blocker, info, warning
from gpupass.core.domain.inventory import PowerState


def _hosts(ctx: CheckContext) -> dict[str, Any]:
    return dict(ctx.facts.host.settings.get("hosts", {}))


def snapshots(ctx: CheckContext) -> Iterable[Finding]:
    if ctx.vm.snapshots:
        yield blocker("esxi-snapshots",
                      f"VM '{ctx.vm.name}' has {ctx.vm.snapshots} snapshot(s); ESXi cannot snapshot or revert a VM "
                      "with a passthrough device, and reverting would drop the device change",
                      "consolidate or delete the snapshots first (Snapshots > Delete All)")


def fault_tolerance(ctx: CheckContext) -> Iterable[Finding]:
    ft = str(ctx.vm.settings.get("ft") or "notConfigured")
    if ft not in ("notConfigured", "disabled"):
        yield blocker("esxi-fault-tolerance",
                      f"VM '{ctx.vm.name}' is protected by Fault Tolerance ({ft}); FT does not allow passthrough devices",
                      "turn Fault Tolerance off for the VM first")


def _reservation_locked(ctx: CheckContext, why: str) -> Iterable[Finding]:
    """The finding for a plan that locks the VM's memory reservation to its size, with why the device needs it."""
    vm = ctx.vm
    if (vm.memory_reserved_bytes or 0) < vm.memory_bytes:
        yield info("esxi-memory-reservation",
                   f"VM '{vm.name}' reserves {(vm.memory_reserved_bytes or 0) >> 20} of {vm.memory_bytes >> 20} MB; "
                   f"{why}, so the plan locks the reservation to the VM's memory size "
                   "(release restores the current value)")


def memory_reservation(ctx: CheckContext) -> Iterable[Finding]:
    # vSphere Networking 7.0, "Configure a PCI Device on a Virtual Machine": "Adding a DirectPath I/O device to a
    # virtual machine sets memory reservation to the memory size of the virtual machine"; Broadcom KB 309986: "the
    # virtual machine must have a memory reservation for the full configured memory size".
    yield from _reservation_locked(ctx, "passthrough needs all of it")


def cluster_settings(ctx: CheckContext) -> Iterable[Finding]:
    host = _hosts(ctx).get(ctx.vm.location, {})
    cluster = host.get("cluster")
    if not cluster:
        return
    dynamic = bool(getattr(ctx.request.options, "dynamic", False))
    if host.get("ha"):
        yield warning("esxi-ha",
                      f"cluster {cluster} has vSphere HA on: after a host failure HA can restart '{ctx.vm.name}' only "
                      "on a host with " + ("a matching free device" if dynamic else "this very device (so: not at all)"),
                      "use --dynamic and identical GPUs on several hosts, or exclude the VM from HA restart")
    if host.get("drs"):
        yield warning("esxi-drs",
                      f"cluster {cluster} has DRS on: the VM can no longer be migrated by DRS while it holds the "
                      "device" + ("" if dynamic else ", and it stays pinned to " + ctx.vm.location),
                      "set a DRS VM override (partially automated) for it to avoid failed recommendations")


def host_connected(ctx: CheckContext) -> Iterable[Finding]:
    hosts = _hosts(ctx)
    for location in {ctx.vm.location, *(gpu.location for gpu in ctx.gpus)}:
        if location and hosts.get(location, {}).get("connected") is False:
            yield blocker("esxi-host-not-connected", f"host {location} is not connected to vCenter",
                          "reconnect the host in vCenter, then run the command again")


def gpu_on_vm_host(ctx: CheckContext) -> Iterable[Finding]:
    for gpu in ctx.gpus:
        if gpu.location and ctx.vm.location and gpu.location != ctx.vm.location:
            yield blocker("esxi-gpu-on-other-host",
                          f"GPU {gpu.address} is in host {gpu.location} but VM '{ctx.vm.name}' is registered on "
                          f"{ctx.vm.location}",
                          f"migrate the VM to {gpu.location} first (while it has no passthrough device)",
                          subject=str(gpu.address))


def reboot_stops_vms(ctx: CheckContext) -> Iterable[Finding]:
    if not ctx.assign_options.allow_host_reboot:
        return
    hosts = _hosts(ctx)
    for location in {gpu.location for gpu in ctx.gpus if not gpu.passthrough.active}:
        if hosts.get(location, {}).get("maintenance_mode"):
            continue
        running = sorted(vm.name for vm in ctx.facts.vms if vm.location == location and vm.power_state is PowerState.RUNNING)
        if running:
            # gpupass never forces the reboot: it puts the host in maintenance mode first, which completes
            # only once no VM runs there (vSphere API reference, HostSystem.EnterMaintenanceMode_Task).
            yield warning("esxi-reboot-stops-vms",
                          f"host {location} is not in maintenance mode and runs {', '.join(running)}: gpupass puts it "
                          "in maintenance mode before the reboot, which waits for them to be migrated (DRS) or "
                          "powered off, and fails the assign (nothing rebooted) if they are not",
                          f"migrate or power off {', '.join(running)}, or put {location} in maintenance mode first")



def vgpu_memory_reservation(ctx: CheckContext) -> Iterable[Finding]:
    yield from _reservation_locked(ctx, "a vGPU VM powers on only with all its memory reserved (vSphere Resource "
                                        "Management, \"Reserve all memory\")")


def vgpu_placement(ctx: CheckContext) -> Iterable[Finding]:
    """ESXi places a vGPU on a GPU of the VM's host when the VM powers on, by the host's assignment policy
    (HostGraphicsConfig.sharedPassthruAssignmentPolicy); the GPU named is where gpupass records and shows it."""
    graphics = _hosts(ctx).get(ctx.vm.location, {}).get("graphics") or {}
    policy = graphics.get("assignment_policy") or "unknown"
    for change in ctx.shares:
        if change.share is None:
            yield info("esxi-vgpu-placement",
                       f"ESXi puts the {change.type.id} vGPU on a GPU of {ctx.vm.location} with room when VM "
                       f"'{ctx.vm.name}' powers on (assignment policy: {policy}), not necessarily on GPU "
                       f"{change.gpu}; gpupass records and shows it there until then",
                       subject=str(change.gpu))

RULES = (snapshots, fault_tolerance, memory_reservation, cluster_settings, host_connected, gpu_on_vm_host,
         reboot_stops_vms)
# A vGPU (assign-share): the host and VM facts that still apply, and what differs from a whole GPU.
VGPU_RULES = (fault_tolerance, host_connected, gpu_on_vm_host, vgpu_memory_reservation, vgpu_placement)
