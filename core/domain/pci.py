"""PCI addresses, functions and BARs: the vocabulary every platform shares."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpupass.core.errors import UsageError

_ADDRESS = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"
)

BRIDGE_CLASS_PREFIX = 0x0604
DISPLAY_CLASS = 0x03


@dataclass(frozen=True, order=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
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
        match = _ADDRESS.match(text.strip())
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


@dataclass(frozen=True)
class Bar:
    """One memory BAR of a function, as the guest must map it."""

    index: int
    size: int
    is_64bit: bool = True


@dataclass(frozen=True)
class PciFunction:
    address: PciAddress
    vendor_id: int
    device_id: int
    class_code: int
    name: str = ""
    driver: str | None = None
    # None means "not known on this host" (e.g. libvirt gives no BARs); an empty tuple means "none".
    bars: tuple[Bar, ...] | None = None

    @property
    def base_class(self) -> int:
        return self.class_code >> 16

    @property
    def is_display(self) -> bool:
        return self.base_class == DISPLAY_CLASS

    @property
    def is_bridge(self) -> bool:
        return self.class_code >> 8 == BRIDGE_CLASS_PREFIX

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


@dataclass(frozen=True)
class IommuGroup:
    number: int
    members: tuple[PciAddress, ...] = field(default_factory=tuple)
