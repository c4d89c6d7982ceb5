"""The hypervisor-neutral preflight rules. Each reads the normalised facts and yields findings."""

from __future__ import annotations

from typing import Iterable

from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding, blocker, info, warning
from gpupass.core.domain.inventory import Firmware, Gpu, HostFacts
from gpupass.core.domain.iommu import keeps_group_viable
from gpupass.core.domain.mmio import format_bytes
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.sharing import ShareMode, Sharing


def iommu_enabled(ctx: CheckContext) -> Iterable[Finding]:
    host = ctx.facts.host
    if host.iommu_enabled is False:
        reasons = "; ".join(host.iommu_reasons) or "the host reports no IOMMU"
        yield blocker(
            "iommu-off",
            f"IOMMU / I/O virtualisation is off on {ctx.host_label or host.name or host.uri}: {reasons}",
            "enable VT-d (Intel) or AMD-Vi/IOMMU in the firmware setup, plus intel_iommu=on on Linux, then reboot",
        )
    elif host.iommu_enabled is None:
        yield warning(
            "iommu-unknown",
            f"gpupass cannot tell whether the IOMMU is on at {ctx.host_label or host.name or host.uri}",
            "check `dmesg | grep -e DMAR -e IOMMU` on the host",
        )


def foreign_group_members(facts: HostFacts, gpu: Gpu, moving: set[PciAddress]) -> list[PciAddress]:
    """Members of the GPU's IOMMU group that stay on the host and make the group unusable for VFIO.

    The card's own functions and whatever else moves to the VM are bound to vfio-pci; every other member must
    keep the group viable by the kernel's rule (core/domain/iommu.py). A member the host does not describe
    counts against the group: gpupass cannot show it is safe.
    """
    if gpu.iommu_group is None:
        return []
    card = {f.address for f in gpu.functions}
    foreign = []
    for member in gpu.iommu_group.members:
        if member in moving or member in card:
            continue
        function = facts.function(member, gpu.location)
        if function is not None and keeps_group_viable(function):
            continue
        foreign.append(member)
    return foreign


def iommu_group_isolated(ctx: CheckContext) -> Iterable[Finding]:
    moving = set(ctx.addresses)
    for gpu in ctx.gpus:
        group = gpu.iommu_group.number if gpu.iommu_group is not None else None  # members only if it has one
        for member in foreign_group_members(ctx.facts, gpu, moving):
            function = ctx.facts.function(member, gpu.location)
            kind = function.kind if function else "device"
            name = f" ({function.name})" if function and function.name else ""
            bound = f", bound to {function.driver}," if function and function.driver else ""
            unbind = (f", or, if the host can do without it, unbind {function.driver} from {member}"
                      if function and function.driver else "")
            yield blocker(
                "iommu-group-shared",
                f"{member} {kind}{name}{bound} shares IOMMU group {group} with GPU {gpu.address}; "
                "VFIO only takes a group whose other members are bridges, driver-less or on vfio-pci/pci-stub",
                "move the card to a slot with its own IOMMU group (check the board manual for CPU-attached slots) "
                f"or enable ACS on the upstream port in the firmware{unbind}; gpupass will not hand a host device "
                "to a VM",
                subject=str(gpu.address),
            )


def companions(ctx: CheckContext) -> Iterable[Finding]:
    for gpu in ctx.gpus:
        if not gpu.companions:
            continue
        names = ", ".join(f"{f.address} ({f.kind})" for f in gpu.companions)
        if ctx.include_companions:
            yield info(
                "companions-included",
                f"GPU {gpu.address} goes with its companion functions {names}, kept as one multifunction device",
                subject=str(gpu.address),
            )
        elif gpu.iommu_group is not None and any(f.address in gpu.iommu_group.members for f in gpu.companions):
            yield blocker(
                "companion-left-behind",
                f"GPU {gpu.address} shares its IOMMU group with {names}, which you left out",
                "assign the companions too (drop --no-companions)",
                subject=str(gpu.address),
            )


def not_assigned_elsewhere(ctx: CheckContext) -> Iterable[Finding]:
    for gpu in ctx.gpus:
        owner = gpu.assigned_to
        if owner and owner != ctx.vm.name:
            other = ctx.facts.find_vm(owner)
            state = f" ({other.power_state.value})" if other else ""
            yield blocker(
                "gpu-assigned-elsewhere",
                f"GPU {gpu.address} is already assigned to VM '{owner}'{state}",
                f"release it first: gpupass release {ctx.host_ref} '{owner}' {gpu.address}",
                subject=str(gpu.address),
            )


def _type_name(sharing: Sharing, type_id: str) -> str:
    known = sharing.type_named(type_id)
    return f"{known.name} ({type_id})" if known and known.name else type_id


def not_shared(ctx: CheckContext) -> Iterable[Finding]:
    """A GPU is either shared (vGPU, partitions) or given whole, not both.

    Why it blocks: a share exists only while the host's vendor driver holds the card. On Linux, passing the card
    through binds vfio-pci instead, and unbinding the vendor driver unregisters it as mdev parent, which removes
    every mediated device of the card (drivers/vfio/mdev/mdev_core.c, mdev_unregister_parent:
    device_for_each_child(..., mdev_device_remove_cb)); NVIDIA's NVML reports one virtualization mode per physical
    GPU, PASSTHROUGH or HOST_VGPU (nvmlGpuVirtualizationMode_t, NVML GRID enums). An SR-IOV PF's virtual functions
    depend on the PF's driver: a PF driver disables them when it is detached (Linux drivers/pci/iov.c,
    pci_iov_remove, warns "driver left SR-IOV enabled after remove" otherwise), so passing the PF through takes
    every VF away from the VMs given one.
    """
    for gpu in ctx.gpus:
        sharing = gpu.sharing
        if sharing.in_use:
            held = ", ".join(f"'{vm}'" for vm in sharing.holders) or "no VM yet"
            kinds = ", ".join(sorted({_type_name(sharing, share.type_id) for share in sharing.shares}))
            yield blocker(
                "gpu-shared",
                f"GPU {gpu.address} holds {len(sharing.shares)} share(s) ({kinds}; held by {held}): a GPU given "
                "whole to a VM can hold no shares, and taking it from the host's driver would remove them",
                "give the shares back first (gpupass release each VM's share, or remove the host's unused mediated "
                "devices" + (", or disable the GPU's SR-IOV virtual functions on the host"
                             if any(s.mode is ShareMode.SRIOV_VF for s in sharing.shares) else "")
                + "), or choose another GPU",
                subject=str(gpu.address),
            )
        elif sharing.offered:
            modes = "/".join(m.value for m in sharing.modes)
            yield info(
                "gpu-sharing-withdrawn",
                f"GPU {gpu.address} can be shared ({len(sharing.types)} {modes} types); while a VM holds it whole "
                "the host offers none of them",
                subject=str(gpu.address),
            )


def passthrough_enabled_on_host(ctx: CheckContext) -> Iterable[Finding]:
    if not ctx.capabilities.host_passthrough_switch:
        return
    for gpu in ctx.gpus:
        state = gpu.passthrough
        if state.capable is False:
            why = "; ".join(state.reasons) or "the host says it cannot pass this device through"
            yield blocker(
                "gpu-not-passthrough-capable",
                f"GPU {gpu.address} cannot be passed through: {why}",
                "check the platform's passthrough requirements for this device and slot",
                subject=str(gpu.address),
            )
        elif state.active and state.enabled is False:
            # Active ("enabled + rebooted") but no longer configured ("configured by the user"): vSphere API
            # reference, HostPciPassthruInfo. It stays passthrough only until the host's next reboot.
            yield info(
                "host-passthrough-ends-at-reboot",
                f"GPU {gpu.address} is active for passthrough but disabled on host {gpu.location or ctx.facts.host.name} "
                "(switched off since the reboot that made it active): passthrough ends at the next reboot, so the "
                "plan enables it again (no reboot needed)",
                subject=str(gpu.address),
            )
        elif not state.active:
            pending = "is enabled but not active yet" if state.enabled else "is not enabled for passthrough"
            host = gpu.location or ctx.facts.host.name
            if state.activates_without_reboot:
                yield info(
                    "host-passthrough-without-reboot",
                    f"GPU {gpu.address} {pending}; host {host} can switch it to passthrough at once, "
                    "without a reboot, so the plan does",
                    subject=str(gpu.address),
                )
            elif ctx.assign_options.allow_host_reboot or ctx.facts.in_maintenance(gpu.location):
                yield warning(
                    "host-reboot-required",
                    f"GPU {gpu.address} {pending}; host {host} must reboot before the VM can use it",
                    "the plan includes the reboot; move other VMs off the host first",
                    subject=str(gpu.address),
                )
            else:
                yield blocker(
                    "host-reboot-required",
                    f"GPU {gpu.address} {pending}; host {host} must reboot before the VM can use it",
                    "put the host in maintenance mode or pass --allow-host-reboot; gpupass never reboots silently",
                    subject=str(gpu.address),
                )


def vm_power_state(ctx: CheckContext) -> Iterable[Finding]:
    vm = ctx.vm
    if vm.is_off or ctx.already_done:
        return
    if ctx.request.options.live and ctx.capabilities.live_attach:
        yield warning(
            "live-change",
            f"VM '{vm.name}' is {vm.power_state.value}: the devices are hot-plugged and written to its definition",
            "the guest must support PCIe hot-plug; a cold boot is the safer path",
        )
        return
    verb = "receive" if ctx.operation == "assign" else "give back"
    yield blocker(
        "vm-not-off",
        f"VM '{vm.name}' is {vm.power_state.value}; it must be powered off to {verb} a passthrough GPU",
        f"shut it down first (it is {vm.power_state.value})"
        + (", or pass --live where the platform supports hot-plug" if ctx.capabilities.live_attach else ""),
    )


def firmware_for_large_bars(ctx: CheckContext) -> Iterable[Finding]:
    need = ctx.need
    if ctx.operation != "assign" or need is None or not need.is_large or ctx.vm.firmware is not Firmware.BIOS:
        return
    total = format_bytes(need.total_bars)
    if ctx.request.options.live and not ctx.vm.is_off:
        yield blocker(
            "firmware-needs-restart",
            f"VM '{ctx.vm.name}' boots with BIOS and the GPUs need {total} of BARs; the switch to EFI only takes "
            "effect at the next boot, so the GPU cannot be hot-plugged now",
            "power the VM off and assign without --live (with --allow-firmware-change if the guest can boot EFI)",
        )
        return
    if ctx.assign_options.allow_firmware_change and ctx.capabilities.firmware_change:
        yield warning(
            "firmware-change",
            f"VM '{ctx.vm.name}' boots with BIOS and the GPUs need {total} of BARs: its firmware will switch to "
            "EFI, and a guest installed under BIOS will not boot until it is converted",
            "convert the guest's disk to GPT with an EFI system partition (Windows: mbr2gpt) before powering on",
        )
        return
    yield blocker(
        "firmware-bios-large-bar",
        f"VM '{ctx.vm.name}' boots with BIOS, but the GPUs need {total} of BARs (more than 16 GiB needs EFI)",
        "use a VM with EFI firmware, or pass --allow-firmware-change if the guest can boot with EFI "
        "(switching an installed BIOS guest makes it unbootable)",
    )


def mmio_window(ctx: CheckContext) -> Iterable[Finding]:
    need = ctx.need
    if ctx.operation != "assign" or need is None:
        return
    policy = ctx.policy
    if policy.fits(need, ctx.vm.mmio_window_bytes):
        return
    current = policy.effective_window(ctx.vm.mmio_window_bytes)
    target = policy.window_for(need)
    if not policy.adjustable or (policy.max_window is not None and target > policy.max_window):
        limit = format_bytes(policy.max_window) if policy.max_window else format_bytes(current)
        yield blocker(
            "mmio-window-too-small",
            f"{policy.explain(need)}, but the guest window is limited to {limit}",
            "assign fewer GPUs to this VM",
        )
        return
    if ctx.request.options.live:
        yield blocker(
            "mmio-needs-restart",
            f"the guest MMIO window must grow from {format_bytes(current)} to {format_bytes(target)}, which a "
            "running VM cannot do",
            "power the VM off and assign without --live",
        )
        return
    yield info(
        "mmio-window-resized",
        f"the guest's 64-bit MMIO window grows from {format_bytes(current)} to {format_bytes(target)} "
        f"({policy.explain(need)})",
    )


def bar_sizes_known(ctx: CheckContext) -> Iterable[Finding]:
    if ctx.operation != "assign":
        return
    for gpu in ctx.gpus:
        if gpu.bars is None:
            yield warning(
                "bar-size-unknown",
                f"the BAR sizes of GPU {gpu.address} ({gpu.model or gpu.function.ids}) are unknown, so the guest "
                "MMIO window cannot be checked",
                f"pass every BAR: --bar-size {gpu.address}=SIZE+SIZE+... (e.g. 16M+64G+32M; the 'Region N: Memory' "
                f"lines of `lspci -vv -s {gpu.address}`)",
                subject=str(gpu.address),
            )


def hide_hypervisor_opt_in(ctx: CheckContext) -> Iterable[Finding]:
    if ctx.operation == "assign" and ctx.assign_options.hide_hypervisor:
        yield info(
            "hypervisor-hidden",
            "the hypervisor is hidden from the guest (works around 'Code 43' from old NVIDIA consumer drivers; "
            "drivers since R465 do not need it)",
        )


ASSIGN_RULES = (
    iommu_enabled,
    iommu_group_isolated,
    companions,
    not_assigned_elsewhere,
    not_shared,
    passthrough_enabled_on_host,
    vm_power_state,
    firmware_for_large_bars,
    mmio_window,
    bar_sizes_known,
    hide_hypervisor_opt_in,
)
RELEASE_RULES = (vm_power_state,)
