"""BAR sizes from sysfs, for connections to this very machine (libvirt does not report them)."""

from __future__ import annotations

from pathlib import Path

from gpupass.core.domain.pci import Bar, PciAddress

IORESOURCE_MEM = 0x00000200
IORESOURCE_MEM_64 = 0x00100000
SYSFS_PCI = Path("/sys/bus/pci/devices")


def parse_resource(text: str) -> tuple[Bar, ...]:
    """Parse a sysfs `resource` file: one 'start end flags' line per region; lines 0-5 are the BARs."""
    bars = []
    for index, line in enumerate(text.splitlines()[:6]):
        start, end, flags = (int(value, 16) for value in line.split())
        if start == 0 and end == 0 or not flags & IORESOURCE_MEM:
            continue
        bars.append(Bar(index, end - start + 1, is_64bit=bool(flags & IORESOURCE_MEM_64)))
    return tuple(bars)


def read_bars(address: PciAddress, root: Path = SYSFS_PCI) -> tuple[Bar, ...] | None:
    try:
        return parse_resource((root / str(address) / "resource").read_text())
    except (OSError, ValueError):
        return None


def is_boot_vga(address: PciAddress, root: Path = SYSFS_PCI) -> bool:
    try:
        return (root / str(address) / "boot_vga").read_text().strip() == "1"
    except OSError:
        return False


def mdev_type_description(address: PciAddress, type_id: str, root: Path = SYSFS_PCI) -> str | None:
    """A vGPU type's sysfs description (Documentation/driver-api/vfio-mediated-device.rst:
    mdev_supported_types/<type-id>/description); libvirt does not report it."""
    try:
        return (root / str(address) / "mdev_supported_types" / type_id / "description").read_text()
    except OSError:
        return None
