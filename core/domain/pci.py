"""PCI addresses, functions and BARs: the vocabulary every platform shares."""

from __future__ import annotations

import re

from gpupass.core.errors import UsageError
from gpupass.core.records import field, record

# The patterns of the read path's modules are compiled on first use (re's cache), not at import: a read that
# parses no address does not pay for one (issue 11: start-up).
_ADDRESS = r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"

DISPLAY_CLASS = 0x03
# Base classes of the PCI Code and ID Assignment Specification (as in the kernel's include/linux/pci_ids.h:
# PCI_BASE_CLASS_DISPLAY 0x03, PCI_BASE_CLASS_ACCELERATOR 0x12). Compute accelerators without a display
# engine report 12h (AMD Instinct MI300X: "Processing accelerators [1200]" in lspci, see
# tests/fixtures/real/kvm/INDEX.md); for gpupass both are GPUs, on every platform.
ACCELERATOR_CLASS = 0x12
GPU_BASE_CLASSES = frozenset({DISPLAY_CLASS, ACCELERATOR_CLASS})

# Config-space header types (PCI Local Bus spec; PCI_HEADER_TYPE_NORMAL/BRIDGE/CARDBUS in the kernel's
# include/uapi/linux/pci_regs.h). libvirt's node device XML names the last two as <capability type='pci-bridge'/>
# and <capability type='cardbus-bridge'/> (libvirt src/util/virpci.c, virPCIHeader enum).
HEADER_NORMAL, HEADER_BRIDGE, HEADER_CARDBUS = 0, 1, 2
# Where a platform does not report the header type: PCI-to-PCI bridges (0604h, semi-transparent 0609h) have
# header type 1 and CardBus bridges (0607h) type 2 by definition (PCI-to-PCI Bridge Architecture spec); every
# other class, host bridges (0600h) included, has a normal header.
_BRIDGE_HEADER_BY_CLASS = {0x0604: HEADER_BRIDGE, 0x0609: HEADER_BRIDGE, 0x0607: HEADER_CARDBUS}


@record(frozen=True, order=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
        # One comparison chain first: every read of a host makes dozens of addresses (a fleet, thousands per second).
        if 0 <= self.domain <= 0xFFFF and 0 <= self.bus <= 0xFF and 0 <= self.slot <= 0x1F and 0 <= self.function <= 7:
            return
        limits = (("domain", 0xFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 0x7))
        for name, limit in limits:
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise UsageError(
                    f"PCI {name} {value:#x} is out of range (0..{limit:#x})",
                    remedy="write addresses as DDDD:BB:SS.F, e.g. 0000:41:00.0",
                )

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        match = re.match(_ADDRESS, text.strip())
        if not match:
            raise UsageError(
                f"{text!r} is not a PCI address",
                remedy="write it as DDDD:BB:SS.F (0000:41:00.0) or BB:SS.F (41:00.0), as lspci shows it",
            )
        return cls(
            domain=int(match["domain"] or "0", 16),
            bus=int(match["bus"], 16),
            slot=int(match["slot"], 16),
            function=int(match["function"]),
        )

    @property
    def device(self) -> tuple[int, int, int]:
        """The physical device this function belongs to: functions of one card share it."""
        return (self.domain, self.bus, self.slot)

    def with_function(self, function: int) -> PciAddress:
        return PciAddress(self.domain, self.bus, self.slot, function)

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@record(frozen=True)
class Bar:
    """One memory BAR of a function, as the guest must map it."""

    index: int
    size: int
    is_64bit: bool = True


@record(frozen=True)
class PciFunction:
    address: PciAddress
    vendor_id: int
    device_id: int
    class_code: int
    name: str = ""
    driver: str | None = None
    # None means "not known on this host" (e.g. libvirt gives no BARs); an empty tuple means "none".
    bars: tuple[Bar, ...] | None = None
    # Config-space header type where the platform reports it (HEADER_*); None means "infer from the class".
    header_type: int | None = None

    @property
    def base_class(self) -> int:
        return self.class_code >> 16

    @property
    def is_display(self) -> bool:
        return self.base_class == DISPLAY_CLASS

    @property
    def is_gpu(self) -> bool:
        """A display controller (03h) or a processing accelerator (12h): both are GPUs for gpupass."""
        return self.base_class in GPU_BASE_CLASSES

    @property
    def effective_header_type(self) -> int:
        if self.header_type is not None:
            return self.header_type
        return _BRIDGE_HEADER_BY_CLASS.get(self.class_code >> 8, HEADER_NORMAL)

    @property
    def is_bridge(self) -> bool:
        """A bridge in the kernel's sense: a function whose header is not a normal (type 0) header."""
        return self.effective_header_type != HEADER_NORMAL

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.device_id:04x}"

    @property
    def kind(self) -> str:
        return describe_class(self.class_code)


_CLASS_NAMES = {
    0x0300: "VGA controller",
    0x0302: "3D controller",
    0x0380: "display controller",
    0x1200: "processing accelerator",
    0x0600: "host bridge",
    0x0403: "audio device",
    0x0106: "SATA controller",
    0x0108: "NVMe controller",
    0x0200: "Ethernet controller",
    0x0604: "PCI bridge",
    0x0C03: "USB controller",
    0x0C80: "serial bus controller",
}


def describe_class(class_code: int) -> str:
    return _CLASS_NAMES.get(class_code >> 8, f"class {class_code:06x}")


@record(frozen=True)
class IommuGroup:
    number: int
    members: tuple[PciAddress, ...] = field(default_factory=tuple)
