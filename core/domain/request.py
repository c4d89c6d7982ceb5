"""What the user asks for: which GPUs go to (or leave) which VM, and with which options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Union

from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.select import GpuSelector
from gpupass.core.errors import UsageError


# A GPU as the request names it: an address, or what the user typed (model, id, qualified address...),
# resolved against the host's facts when the plan is made.
GpuRef = Union[PciAddress, GpuSelector]


@dataclass(frozen=True)
class AssignOptions:
    include_companions: bool = True
    # Switching an installed guest from BIOS to EFI makes it unbootable, so it is never implicit.
    allow_firmware_change: bool = False
    hide_hypervisor: bool = False
    live: bool = False
    dynamic: bool = False
    allow_host_reboot: bool = False
    # User-supplied BAR sizes, every BAR of the card (an L40S is 16M + 64G + 32M), for cards the host cannot
    # describe and the catalog does not know. A single int is one BAR.
    bar_sizes: Mapping[PciAddress, tuple[int, ...]] = field(default_factory=dict)
    # A share of this type (an mdev type, a vGPU profile, a partition size; see core/domain/sharing.py) instead of
    # the whole GPU; None gives the whole GPU.
    share: str | None = None
    # Platform-only settings of that share (docs/plugins.md, "Platform-only extras"), NAME -> VALUE as typed, e.g.
    # Hyper-V's Add-VMGpuPartitionAdapter -MinPartitionVRAM: the backend names those it takes
    # (Capabilities.ex_share_options) and its rules check the values against the host's.
    ex_share_options: Mapping[str, str] = field(default_factory=dict)
    # A share plan may change the host's sharing configuration first where the GPU needs it (Sharing.host_change:
    # ESXi's graphics type to shared direct); like a host reboot, never done silently.
    allow_host_sharing_change: bool = False

    def __post_init__(self) -> None:
        if self.allow_host_sharing_change and self.share is None:
            raise UsageError("--allow-host-sharing-change applies to a share (--share TYPE)",
                             remedy="add --share TYPE, or drop --allow-host-sharing-change")
        if self.ex_share_options and self.share is None:
            raise UsageError("--share-option sets a share, and no --share is asked for",
                             remedy="add --share TYPE, or drop --share-option")
        for name in self.ex_share_options:
            if not name.strip():
                raise UsageError("--share-option needs a NAME=VALUE", remedy="e.g. --share-option MinPartitionVRAM=80000000")
        if self.share is not None and not self.share.strip():
            raise UsageError("--share needs a share type", remedy="name one of the types `gpupass gpus HOST --json` "
                             "lists under sharing.types (an mdev type, a vGPU profile such as A100-4C, partitions-N)")
        normalised = {}
        for address, sizes in self.bar_sizes.items():
            sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
            _check_bar_sizes(address, sizes)
            normalised[address] = sizes
        object.__setattr__(self, "bar_sizes", normalised)


def _check_bar_sizes(address: object, sizes: tuple[object, ...]) -> None:
    """Every BAR size of one card as a user gave it (CLI, Python API, Ansible): whole bytes, a power of two, the card
    within the physical address space. A BAR decodes a power-of-two size: software learns it by writing all 1s and
    reading back the bits the device hardwires to 0 (PCI Local Bus Specification 3.0, 6.2.5.1), and Linux computes
    it as the lowest writable bit, `size & ~(size - 1)` (pci_size() in drivers/pci/probe.c); `lspci -vv` shows it
    as Region N: ... [size=16M]. Any other number is a typing slip that would size the MMIO window wrongly."""
    from gpupass.core.domain.mmio import MAX_BAR_BYTES, format_bytes

    example = "give every BAR as `lspci -vv` shows it (Region N: ... [size=...]), e.g. --bar-size 41:00.0=16M+64G+32M"
    if not sizes:
        raise UsageError(f"--bar-size for {address} gives no size", remedy=example)
    for size in sizes:
        # bool is an int to Python; a float or a string here is a caller's slip the CLI's parser never makes.
        if isinstance(size, bool) or not isinstance(size, int):
            raise UsageError(f"--bar-size for {address}: {size!r} is not a whole number of bytes", remedy=example)
        if size <= 0:
            raise UsageError(f"--bar-size for {address} needs positive sizes", remedy=example)
        if size & (size - 1):
            raise UsageError(f"--bar-size for {address}: {format_bytes(size)} ({size} bytes) is not a power of two, "
                             "which every PCI BAR is", remedy=example)
    if sum(sizes) > MAX_BAR_BYTES:  # type: ignore[arg-type]  # every size is an int (checked above)
        raise UsageError(f"--bar-size for {address} adds up to more than {format_bytes(MAX_BAR_BYTES)}",
                         remedy="give the card's real BAR sizes (`lspci -vv` shows them as Region N: ... [size=..])")


@dataclass(frozen=True)
class AssignmentRequest:
    vm: str
    gpus: tuple[GpuRef, ...]
    options: AssignOptions = field(default_factory=AssignOptions)

    def __post_init__(self) -> None:
        if not self.gpus:
            raise UsageError("no GPU given", remedy="name at least one GPU by address, model or vendor:device id (`gpupass gpus HOST` lists them)")
        _reject_duplicates(self.gpus)
        options = self.options
        if options.share is not None:
            if len(self.gpus) != 1:
                raise UsageError(f"a share is taken from one GPU, and {len(self.gpus)} are named",
                                 remedy="name one GPU with --share (run the command once per share)")
            # These shape a whole-GPU passthrough; a share is a virtual device the host's driver presents.
            whole_only = [flag for flag, on in (("--live", options.live), ("--dynamic", options.dynamic),
                                                ("--bar-size", bool(options.bar_sizes)),
                                                ("--no-companions", not options.include_companions),
                                                ("--allow-host-reboot", options.allow_host_reboot),
                                                ("--allow-firmware-change", options.allow_firmware_change),
                                                ("--hide-hypervisor", options.hide_hypervisor)) if on]
            if whole_only:
                raise UsageError(f"{', '.join(whole_only)} applies to a whole GPU, not to a share (--share)",
                                 remedy="drop " + ", ".join(whole_only) + "; shares are added with the VM off")


@dataclass(frozen=True)
class ReleaseOptions:
    live: bool = False
    disable_host_passthrough: bool = False


@dataclass(frozen=True)
class ReleaseRequest:
    vm: str
    # Empty means every device the VM holds.
    gpus: tuple[GpuRef, ...] = ()
    options: ReleaseOptions = field(default_factory=ReleaseOptions)

    def __post_init__(self) -> None:
        _reject_duplicates(self.gpus)


def _reject_duplicates(addresses: tuple[GpuRef, ...]) -> None:
    seen: set[GpuRef] = set()
    for address in addresses:
        if address in seen:
            raise UsageError(f"GPU {address} is named twice", remedy="name each GPU once")
        seen.add(address)
