"""Preflight rules that only make sense on KVM hosts."""

from __future__ import annotations

from typing import Iterable

from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding, info, warning


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
                f"stop host users of the card first (nvidia-persistenced, a display server) or the VM will not start",
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


RULES = (boot_display, host_driver, machine_type)
