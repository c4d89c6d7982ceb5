"""Preflight rules for a GPU share (assign-share, release-share): hypervisor-neutral, read from the sharing facts.

The whole-GPU rules (IOMMU group, MMIO window, firmware) do not run for a share: the physical GPU stays with the
host's vendor driver, and the VM gets a virtual device that driver presents (a mediated device, a vGPU, a GPU
partition). What matters instead is whether the GPU offers the type, has room for one more, and is not given whole.
"""

from __future__ import annotations

import shlex
from typing import Iterable

from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding, blocker, warning
from gpupass.core.domain.inventory import Gpu
from gpupass.core.domain.sharing import ShareMode, mig_backed


def _gpu(ctx: CheckContext, index: int) -> Gpu:
    change = ctx.shares[index]
    return next(g for g in ctx.gpus if g.address == change.gpu and g.location == change.location)


def share_type_offered(ctx: CheckContext) -> Iterable[Finding]:
    """The type must be one the GPU's driver offers now (libvirt mdev_types, the ESXi host's vGPU profiles,
    Get-VMHostPartitionableGpu): a VM's share can only be created from the parent device's own supported types
    (Linux Documentation/driver-api/vfio-mediated-device.rst, "mdev_supported_types")."""
    for index, change in enumerate(ctx.shares):
        if change.share is not None:
            continue
        gpu = _gpu(ctx, index)
        if gpu.sharing.type_named(change.type.id) is None:
            offered = ", ".join(t.id for t in gpu.sharing.types)
            yield blocker(
                "share-type-not-offered",
                f"GPU {gpu.address} does not offer share type {change.type.id} ({change.type.name})"
                + (f"; it offers {offered}" if offered else "; it offers no sharing"),
                "choose one of its types, or a GPU that offers this one (`gpupass fleet find --profile "
                f"{shlex.quote(change.type.name or change.type.id)}`)",
                subject=str(gpu.address),
            )


def share_capacity(ctx: CheckContext) -> Iterable[Finding]:
    """Room for one more: the driver's count of instances it can still create (mdev `available_instances`, which
    libvirt reports as availableInstances), unless a share of the type exists already and no VM holds it."""
    for index, change in enumerate(ctx.shares):
        gpu = _gpu(ctx, index)
        offered = gpu.sharing.type_named(change.type.id)
        if change.share is not None or offered is None or gpu.sharing.free(change.type.id):
            continue
        if offered.available == 0 and offered.mode is ShareMode.SRIOV_VF:
            # VFs are enabled by the host's admin, never created by gpupass (sharing.SRIOV_VF_TYPE)
            enabled = sum(1 for s in gpu.sharing.shares if s.type_id == offered.id)
            yield blocker(
                "share-capacity-exhausted",
                f"GPU {gpu.address} has no free virtual function: all {enabled} enabled are held by VMs"
                + (f" ({offered.max_instances} can be enabled)" if offered.max_instances else ""),
                "release a VF from a VM, or choose another GPU; enabling more VFs on the host first disables "
                "every VF (the kernel refuses to add VFs while any are enabled)",
                subject=str(gpu.address),
            )
        elif offered.available == 0:
            yield blocker(
                "share-capacity-exhausted",
                f"GPU {gpu.address} has no room for another {offered.id} ({offered.name}) share"
                + (f": all {offered.max_instances} are in use" if offered.max_instances else ""),
                "release a share of this GPU, or choose another GPU (`gpupass fleet find --profile "
                f"{shlex.quote(offered.name or offered.id)}` lists free capacity)",
                subject=str(gpu.address),
            )
        elif offered.available is None:
            yield warning(
                "share-capacity-unknown",
                f"the host does not say how many more {offered.id} shares GPU {gpu.address} can take now",
                "the step that creates the share fails cleanly (and is rolled back) if the GPU is full",
                subject=str(gpu.address),
            )


def one_share_type_per_gpu(ctx: CheckContext) -> Iterable[Finding]:
    """Where the vendor allows one type at a time on a GPU (Sharing.one_type_at_a_time: NVIDIA time-sliced vGPU in
    equal-size mode, NVIDIA Virtual GPU Software User Guide, "Valid Virtual GPU Configurations on a Single GPU";
    Hyper-V's equal partitions), a share of another type than those the GPU holds cannot be added."""
    for index, change in enumerate(ctx.shares):
        gpu = _gpu(ctx, index)
        if change.share is not None or not gpu.sharing.one_type_at_a_time:
            continue
        other = gpu.sharing.other_types_held(change.type)
        if other:
            yield blocker(
                "share-type-mixed",
                f"GPU {gpu.address} holds {', '.join(other)} shares, and its driver allows one share type at a time "
                f"on a GPU: a {change.type.id} share cannot be added",
                f"ask for {other[0]}, or choose a GPU that holds no other type",
                subject=str(gpu.address),
            )


def mig_mode_matches(ctx: CheckContext) -> Iterable[Finding]:
    """A MIG-backed vGPU type needs MIG mode on: "To support GPU Instances with NVIDIA vGPU, a GPU must be configured
    with MIG mode enabled" and "By default, MIG mode is disabled" (NVIDIA AI Enterprise, "Configuring a GPU for
    MIG-Backed vGPUs"). A time-sliced type is for a GPU without MIG (NVIDIA AI Enterprise, "Choosing a vGPU Mode":
    time-sliced vGPU for "a GPU without MIG"); a GPU in MIG mode offers its MIG-backed types instead, so that is a
    warning (the driver's own count of instances then says whether one fits)."""
    for index, change in enumerate(ctx.shares):
        gpu = _gpu(ctx, index)
        backed, mode = mig_backed(change.type), gpu.sharing.mig_mode
        if change.share is not None or backed is None:
            continue
        if backed and mode is False:
            yield blocker(
                "mig-mode-disabled",
                f"{change.type.name or change.type.id} is a MIG-backed vGPU type and GPU {gpu.address} is not in MIG "
                "mode: a MIG-backed vGPU runs on a GPU instance, which exists only with MIG mode enabled",
                "enable MIG mode on the host with no vGPU running on the GPU (nvidia-smi -i GPU -mig 1, then create "
                "the GPU instances its vGPU types need), or ask for a time-sliced type",
                subject=str(gpu.address),
            )
        elif backed and mode is None:
            yield warning(
                "mig-mode-unknown",
                f"{change.type.name or change.type.id} is a MIG-backed vGPU type; the host does not say whether GPU "
                f"{gpu.address} is in MIG mode, which it needs",
                "check on the host: nvidia-smi -q (\"MIG Mode\", \"Current : Enabled\")",
                subject=str(gpu.address),
            )
        elif not backed and mode is True:
            yield warning(
                "mig-mode-enabled",
                f"{change.type.name or change.type.id} is a time-sliced vGPU type and GPU {gpu.address} is in MIG "
                "mode, which serves MIG-backed vGPU types",
                "ask for a MIG-backed type, or disable MIG mode with no vGPU on the GPU (nvidia-smi -i GPU -mig 0)",
                subject=str(gpu.address),
            )


def host_sharing_change(ctx: CheckContext) -> Iterable[Finding]:
    """A GPU whose host must change its sharing configuration before it can give the type (Sharing.host_change: an
    ESXi GPU in shared graphics mode, which offers vGPU profiles only in shared direct mode, vSphere Resource
    Management "Configuring Host Graphics") is given a share only with the request's explicit permission; the
    plan then changes the host first, as a step with its own undo."""
    for index, change in enumerate(ctx.shares):
        gpu = _gpu(ctx, index)
        if change.share is not None or not gpu.sharing.host_change:
            continue
        if ctx.assign_options.allow_host_sharing_change:
            yield warning("share-host-change", f"GPU {gpu.address}: {gpu.sharing.host_change}; the plan does it first",
                          "see the first step: it is undone if a later one fails", subject=str(gpu.address))
        else:
            yield blocker("share-host-change-needed",
                          f"GPU {gpu.address} cannot give a {change.type.id} share as the host is set up now: "
                          f"{gpu.sharing.host_change}",
                          "run the command again with --allow-host-sharing-change to let the plan do it (a step "
                          "with an undo), or change it yourself", subject=str(gpu.address))


def not_given_whole(ctx: CheckContext) -> Iterable[Finding]:
    """A GPU passed through whole is bound to vfio-pci, not to the vendor driver that creates shares (the converse
    of rules.not_shared, with the same sources)."""
    for gpu in ctx.gpus:
        if gpu.assigned_to:
            yield blocker(
                "gpu-assigned-whole",
                f"GPU {gpu.address} is given whole to VM '{gpu.assigned_to}': it cannot be shared while a VM holds it",
                f"release it first: gpupass release {ctx.host_ref} '{gpu.assigned_to}' {gpu.address}",
                subject=str(gpu.address),
            )


def vm_off_for_share(ctx: CheckContext) -> Iterable[Finding]:
    """gpupass adds and removes a share with the VM off on every platform, as a change of its persistent definition:
    the VM sees the new device at its next boot. (Some platforms hot-plug some shares; gpupass does not plan that,
    so --live is refused with --share.)"""
    vm = ctx.vm
    if vm.is_off or ctx.already_done:
        return
    verb = "receive" if ctx.operation == "assign-share" else "give back"
    yield blocker(
        "vm-not-off",
        f"VM '{vm.name}' is {vm.power_state.value}; it must be powered off to {verb} a GPU share",
        f"shut it down first (it is {vm.power_state.value})",
    )


ASSIGN_SHARE_RULES = (share_type_offered, share_capacity, one_share_type_per_gpu, mig_mode_matches,
                      host_sharing_change, not_given_whole,
                      vm_off_for_share)
RELEASE_SHARE_RULES = (vm_off_for_share,)
