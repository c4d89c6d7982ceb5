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


# ClusterDrsConfigInfo.defaultVmBehavior (DrsBehavior) of a cluster whose DRS carries out its own migrations: "fullyAutomated",
# "Specifies that VirtualCenter should automate both the migration of virtual machines and their placement with a host
# at power on"; "manual" and "partiallyAutomated" only recommend migrations (vSphere API reference, DrsBehavior; as in
# vmware/govmomi vim25/types/enum.go). Unset counts as not automated: gpupass does not guess.
FULLY_AUTOMATED = "fullyAutomated"


def reboot_stops_vms(ctx: CheckContext) -> Iterable[Finding]:
    """A plan whose host must reboot while VMs run there is blocked, unless DRS will move them out of the way.

    gpupass reboots a host only in maintenance mode (RebootHost_Task force=False) and puts it there with
    EnterMaintenanceMode_Task, which "completes once there are no powered-on virtual machines on the host" and "does
    not directly initiate any operations to evacuate or power-down powered-on virtual machines. However, if the host is
    part of a cluster with VMware DRS enabled, DRS provides migration recommendations to evacuate the powered-on
    virtual machines. If DRS is in fully-automatic mode, these are automatically scheduled" (vSphere API reference,
    HostSystem.EnterMaintenanceMode; pyVmomi docs/vim/HostSystem.rst). So without a fully automated DRS the step can
    only fail at apply, after the run's first writes: it is refused at check/plan time instead, with the remedy. A
    running VM that holds a passthrough device cannot be migrated by DRS at all (no vMotion with VMDirectPath I/O), so
    it blocks even then. A host that may activate the device without a reboot (applyNow) is refused all the same with
    --allow-host-reboot (whether it reboots is known only at apply); without the option it needs no reboot, and a
    change it leaves for one is switched back and said."""
    if not ctx.assign_options.allow_host_reboot:
        return
    hosts = _hosts(ctx)
    for location in sorted({gpu.location for gpu in ctx.gpus if not gpu.passthrough.active and gpu.location}):
        host = hosts.get(location, {})
        if host.get("maintenance_mode"):
            continue
        running = [vm for vm in ctx.facts.vms if vm.location == location and vm.power_state is PowerState.RUNNING]
        if not running:
            continue
        names = ", ".join(sorted(vm.name for vm in running))
        pinned = sorted(vm.name for vm in running if vm.assigned)
        cluster = host.get("cluster")
        automated = bool(host.get("drs")) and host.get("drs_behavior") == FULLY_AUTOMATED
        at_once = any(gpu.passthrough.activates_without_reboot for gpu in ctx.gpus if gpu.location == location)
        if automated and not pinned:
            yield warning("esxi-reboot-stops-vms",
                          f"host {location} runs {names}: before its reboot gpupass puts it in maintenance mode, and "
                          f"the fully automated DRS of cluster {cluster} migrates them to other hosts then; where DRS "
                          "finds no host for one (or a VM override keeps it), the host does not enter maintenance "
                          "mode and the assign fails with nothing rebooted -- gpupass never stops a running VM",
                          f"migrate or power off {names} first to be sure, or put {location} in maintenance mode "
                          "yourself")
            continue
        behavior = host.get("drs_behavior")
        why = (f"DRS cannot migrate {', '.join(pinned)}: a VM holding a passthrough device has no vMotion" if pinned
               else f"cluster {cluster}'s DRS is {behavior}, which only recommends the migrations" if host.get("drs")
               and behavior else f"cluster {cluster}'s DRS has no automation level set (defaultVmBehavior), so "
               "gpupass does not count on it to migrate them" if host.get("drs")
               else f"cluster {cluster} has DRS off" if cluster else f"{location} is in no DRS cluster")
        remedy = (f"migrate or power off {names}, or put {location} in maintenance mode yourself, then run the "
                  "command again" + ("" if pinned or not cluster else
                                     f" (or set cluster {cluster}'s DRS to fully automated, so that it migrates them)")
                  + ("; or run it without --allow-host-reboot: the host activates the device at once where it can, "
                     "and where it cannot gpupass switches it back and says so" if at_once else ""))
        yield blocker("esxi-reboot-stops-vms",
                      f"host {location} may have to reboot for passthrough to become active"
                      + (" (if it cannot activate the device at once)" if at_once else "")
                      + f" and runs {names}: gpupass never stops a running VM -- it reboots a host only in "
                      "maintenance mode, which the host enters only once no VM runs there, and nothing would move "
                      f"them: {why}", remedy)


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
