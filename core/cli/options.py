"""Options shared by check, plan and assign, turned into the core's request objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import click

from gpupass.core.domain.mmio import MAX_BAR_BYTES, format_bytes, parse_size
from gpupass.core.domain.pci import PciAddress
from gpupass.core.errors import UsageError

if TYPE_CHECKING:
    from gpupass.core.domain.request import AssignmentRequest
    from gpupass.core.domain.select import GpuSelector


HOST_HELP = ("HOST is a URI (qemu:///system, qemu+ssh://admin@node7/system, esxi://user@vcenter/DC, "
             "hyperv://user@host), a name from the config file or a lab host (lab-kvm).")
DEFAULT_HOST_HELP = ("Left out, HOST is the first of $GPUPASS_HOST, $LIBVIRT_DEFAULT_URI, $GOVC_URL (with "
                     "GOVC_USERNAME/GOVC_PASSWORD/GOVC_INSECURE/GOVC_TLS_CA_CERTS) and $VMWARE_HOST (with "
                     "VMWARE_USER/VMWARE_PASSWORD/VMWARE_VALIDATE_CERTS) that is set.")
GPU_HELP = ("GPU is any name `gpupass gpus` prints: a PCI address (0000:41:00.0 or 41:00.0), the host-qualified "
            "address of a vCenter (esx02.example.com/0000:3b:00.0), a Hyper-V LocationPath "
            "(PCIROOT(40)#PCI(0100)#...), virsh's node-device name (pci_0000_41_00_0), a vendor:device id "
            "(10de:20b5) or the model's words (H100, 'A100 80GB'). A name that matches several GPUs is an "
            "error that lists them.")


# A click command function, before or after click wraps it: the decorators here hand back what they are given.
F = TypeVar("F", bound=Callable[..., Any])


def describe(*paragraphs: str, examples: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Append paragraphs and an Examples block to a command's help (its first line stays its short help)."""

    def decorate(function: F) -> F:
        text = (function.__doc__ or "").rstrip()
        import inspect

        text = inspect.cleandoc(text)
        for paragraph in paragraphs:
            text += "\n\n" + paragraph
        if examples:
            text += "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)
        function.__doc__ = text
        return function

    return decorate


def assignment_options(command: F) -> F:
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
        click.option("--allow-host-sharing-change", is_flag=True,
                     help="With --share: allow the plan to change the host's sharing setup first where the GPU needs "
                          "it (ESXi: its graphics type to shared direct, Xorg restarted); never done silently."),
        click.option("--share", "share", metavar="TYPE",
                     help="Give a share of the GPU instead of the whole GPU: an mdev type (nvidia-46), a vGPU profile "
                          "(A100-4C, GRID P40-1Q) or a partition size (partitions-4), as `gpupass gpus HOST` lists "
                          "them. `release` finds the share the VM holds by itself."),
        click.option("--share-option", "share_options", multiple=True, metavar="NAME=VALUE",
                     help="A platform-only setting of the share (repeatable). Hyper-V: Add-VMGpuPartitionAdapter's "
                          "Min/Max/OptimalPartitionVRAM, ...Encode, ...Decode, ...Compute, in the units "
                          "Get-VMHostPartitionableGpu reports (`gpus --json`: extra.gpu_partitioning)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def parse_addresses(values: Sequence[str]) -> tuple[GpuSelector, ...]:
    """GPU names as typed: addresses, host-qualified addresses, models, ids... (resolved on the host)."""
    from gpupass.core.domain.select import parse_selectors

    return parse_selectors(values)


def build_assignment(vm: str, gpus: Sequence[str], **options: Any) -> AssignmentRequest:
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
    share_options: dict[str, str] = {}
    for item in options.pop("share_options", ()):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--share-option {item!r} is not NAME=VALUE",
                             remedy="write it as NAME=VALUE, e.g. --share-option MinPartitionVRAM=80000000")
        if name.strip().lower() in {n.lower() for n in share_options}:
            raise UsageError(f"--share-option {name.strip()} is given twice", remedy="give each setting once")
        share_options[name.strip()] = value.strip()
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
            share=options.get("share"),
            ex_share_options=share_options,
            allow_host_sharing_change=bool(options.get("allow_host_sharing_change")),
        ),
    )
