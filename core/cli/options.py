"""Options shared by check, plan and assign, turned into the core's request objects."""

from __future__ import annotations

import click

from gpupass.core.domain.mmio import MAX_BAR_BYTES, format_bytes, parse_size
from gpupass.core.domain.pci import PciAddress
from gpupass.core.errors import UsageError


def assignment_options(command):
    decorators = [
        click.option("--no-companions", is_flag=True,
                     help="Leave the GPU's companion functions (HDMI audio, USB-C) on the host."),
        click.option("--allow-firmware-change", is_flag=True,
                     help="Allow switching a BIOS VM to EFI when the BARs need it (a BIOS-installed guest "
                          "will not boot until converted)."),
        click.option("--hide-hypervisor", is_flag=True,
                     help="Hide the hypervisor from the guest (old NVIDIA consumer drivers, 'Code 43')."),
        click.option("--live", is_flag=True, help="Hot-plug into a running VM where the platform can."),
        click.option("--dynamic", is_flag=True, help="Bind by vendor/device instead of host address (ESXi)."),
        click.option("--allow-host-reboot", is_flag=True,
                     help="Allow a plan that needs a host reboot to enable passthrough (never done silently)."),
        click.option("--bar-size", "bar_sizes", multiple=True, metavar="ADDR=SIZE[+SIZE...]",
                     help="Every BAR of a GPU the host cannot describe, as `lspci -vv` lists its memory regions, "
                          "e.g. 0000:41:00.0=16M+64G+32M (repeat the option or join sizes with '+')."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def parse_addresses(values):
    """GPU names as typed: addresses, host-qualified addresses, models, ids... (resolved on the host)."""
    from gpupass.core.domain.select import parse_selectors

    return parse_selectors(values)


def build_assignment(vm: str, gpus, **options):
    from gpupass.core.domain.request import AssignmentRequest, AssignOptions

    sizes: dict[PciAddress, tuple[int, ...]] = {}
    for item in options.pop("bar_sizes", ()):
        address, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--bar-size {item!r} has no '='",
                             remedy="write it as ADDRESS=SIZE[+SIZE...], e.g. 41:00.0=16M+64G+32M")
        parsed = PciAddress.parse(address)
        bars = tuple(parse_size(part) for part in text.replace(",", "+").split("+"))
        sizes[parsed] = sizes.get(parsed, ()) + bars
        if sum(sizes[parsed]) > MAX_BAR_BYTES:  # each BAR is bounded, and so are all of one card's together
            raise UsageError(f"--bar-size for {parsed} adds up to more than {format_bytes(MAX_BAR_BYTES)}",
                             remedy="give the card's real BAR sizes (`lspci -vv` shows them as Region N: ... [size=..])")
    return AssignmentRequest(
        vm=vm,
        gpus=parse_addresses(gpus),
        options=AssignOptions(
            include_companions=not options["no_companions"],
            allow_firmware_change=options["allow_firmware_change"],
            hide_hypervisor=options["hide_hypervisor"],
            live=options["live"],
            dynamic=options["dynamic"],
            allow_host_reboot=options["allow_host_reboot"],
            bar_sizes=sizes,
        ),
    )
