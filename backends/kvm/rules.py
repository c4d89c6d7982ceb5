"""Preflight rules that only make sense on KVM hosts."""

from __future__ import annotations

from typing import Iterable

from gpupass.backends.kvm import physbits
from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding, blocker, info, warning
from gpupass.core.domain.mmio import format_bytes
from gpupass.core.domain.sharing import ShareMode, mig_backed


def boot_display(ctx: CheckContext) -> Iterable[Finding]:
    for gpu in ctx.gpus:
        if gpu.extra.get("boot_vga"):
            yield warning(
                "kvm-boot-vga",
                f"GPU {gpu.address} is the host's boot display; its firmware framebuffer can hold BAR 0 "
                "(\"BAR 0: can't reserve\" when the VM starts)",
                "boot the host from another display, or add video=efifb:off (or simplefb:off) to the kernel line",
                subject=str(gpu.address),
            )


def host_driver(ctx: CheckContext) -> Iterable[Finding]:
    for function in ctx.functions:
        if function.driver and function.driver != "vfio-pci":
            yield info(
                "kvm-host-driver",
                f"{function.address} is bound to {function.driver} on the host; libvirt unbinds it at VM start",
                "stop host users of the card first (nvidia-persistenced, a display server) or the VM will not start",
                subject=str(function.address),
            )


def machine_type(ctx: CheckContext) -> Iterable[Finding]:
    need = ctx.need
    machine = str(ctx.vm.settings.get("machine", ""))
    if need is not None and need.is_large and machine and "q35" not in machine:
        yield warning(
            "kvm-machine-type",
            f"VM '{ctx.vm.name}' uses machine type {machine}; large-BAR GPUs are only reliable on q35 with OVMF",
            "recreate the VM with machine type q35",
        )


_PHYS_BITS_FIX = ("give the VM the host's address width: <cpu mode='host-passthrough'> with "
                  "<maxphysaddr mode='passthrough'/> in it (virsh edit VM), or <maxphysaddr mode='emulate' "
                  "bits='N'/> with N up to the host's (lscpu: 'Address sizes')")


def phys_bits(ctx: CheckContext) -> Iterable[Finding]:
    """QEMU refuses to start when RAM plus the 64-bit PCI window end beyond the vCPU's reach (physbits.py)."""
    need = ctx.need
    if ctx.operation != "assign" or need is None:
        return
    bits = ctx.vm.settings.get("phys_bits", physbits.DEFAULT_PHYS_BITS)
    if bits == physbits.HOST:
        return
    window = ctx.vm.mmio_window_bytes if ctx.policy.fits(need, ctx.vm.mmio_window_bytes) else ctx.policy.window_for(need)
    window = window if window is not None else ctx.policy.default_window
    top = physbits.highest_guest_address(ctx.vm.memory_bytes, window, str(ctx.vm.settings.get("machine", "")))
    what = (f"VM '{ctx.vm.name}' has {format_bytes(ctx.vm.memory_bytes)} of RAM and a {format_bytes(window)} 64-bit "
            f"PCI window, so its highest guest address is {top:#x}")
    if top > physbits.reachable(int(bits)):
        yield blocker(
            "kvm-phys-bits",
            f"{what}, beyond the {bits} physical address bits of its CPU model ({format_bytes(1 << int(bits))}); "
            f"QEMU will refuse to start it (\"phys-bits too low ({bits})\")",
            _PHYS_BITS_FIX,
        )
    elif int(bits) == physbits.DEFAULT_PHYS_BITS and top >= physbits.AMD_HT_START:
        yield warning(
            "kvm-phys-bits",
            f"{what}; on an AMD host QEMU moves RAM above 1 TiB to avoid the HyperTransport range at 1012 GiB, "
            f"which the {bits}-bit CPU model cannot reach",
            _PHYS_BITS_FIX,
        )


RULES = (boot_display, host_driver, machine_type, phys_bits)


# -- shares (assign-share) ------------------------------------------------------------------------------------
def vgpu_manager_and_license(ctx: CheckContext) -> Iterable[Finding]:
    """NVIDIA vGPU needs NVIDIA's Virtual GPU Manager on the host, the `nvidia` driver bound to the GPU, which is what
    offers the vGPU types (mdev types, or a VF's creatable_vgpu_types), and a license in the guest: "install the
    display drivers for your guest OS and license any NVIDIA vGPU software licensed products that you are using"
    (NVIDIA Virtual GPU Software User Guide 18.0, introduction). The host side is readable (the driver libvirt
    reports); the license is served to the guest (NVIDIA License System) and cannot be read from the host."""
    for change in ctx.shares:
        if change.share is not None or mig_backed(change.type) is None:
            continue  # already held, or not an NVIDIA vGPU profile (an SR-IOV VF, another vendor's mdev type)
        gpu = next(g for g in ctx.gpus if g.address == change.gpu)
        driver = gpu.function.driver
        if driver is not None and driver != "nvidia":
            yield blocker(
                "kvm-vgpu-manager-missing",
                f"GPU {gpu.address} is bound to {driver}, not to NVIDIA's vGPU manager (driver nvidia), which a "
                f"{change.type.name or change.type.id} vGPU needs",
                "install NVIDIA's Virtual GPU Manager for KVM on the host and bind the GPU to it",
                subject=str(gpu.address),
            )
        else:
            yield info(
                "nvidia-vgpu-license",
                f"{change.type.name or change.type.id} is an NVIDIA vGPU: the host side is there (GPU {gpu.address} "
                f"offers it through the vGPU manager, driver {driver or 'not reported'}); the guest's NVIDIA driver "
                "also needs a vGPU software license, which gpupass cannot read from the host",
                "license the guest (NVIDIA License System client configuration token) before relying on the vGPU",
                subject=str(gpu.address),
            )


def vf_needs_iommu(ctx: CheckContext) -> Iterable[Finding]:
    """A VF goes to the VM through VFIO like any PCI device: the host's IOMMU must be on (the whole-GPU rule
    iommu-disabled does not run for a share)."""
    on_vfs = any(c.type.mode in (ShareMode.SRIOV_VF, ShareMode.VF_VGPU) and c.share is None for c in ctx.shares)
    if on_vfs and ctx.facts.host.iommu_enabled is False:
        yield blocker(
            "kvm-vf-iommu-off",
            "the host's IOMMU is off: a virtual function is given to the VM through VFIO, which needs it",
            "enable VT-d / AMD-Vi in the firmware and intel_iommu=on (or amd_iommu=on) on the kernel line, then reboot",
        )


SHARE_RULES = (vgpu_manager_and_license, vf_needs_iommu)
