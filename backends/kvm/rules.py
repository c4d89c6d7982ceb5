"""Preflight rules that only make sense on KVM hosts."""

from __future__ import annotations

from typing import Iterable

from gpupass.backends.kvm import physbits
from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding, blocker, info, warning
from gpupass.core.domain.mmio import format_bytes


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
