"""How gpupass names a Hyper-V device on the command line: a PCI address derived from its LocationPath.

Windows gives a device's place as a location path, e.g. ``PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)``:
the root bridge's _UID, then one ``PCI(DDFF)`` per hop (device DD, function FF, both hex). Bus numbers are
not part of it. gpupass derives a PCI address from it, the same on every run:

* domain   = the PCIROOT number (hex), e.g. ``40`` -> ``0040``;
* bus      = a CRC-32 of the path up to the last hop (the slot's parent bridge chain), modulo 256; two parent
  chains of one domain that land on the same number get the next free one, in sorted order of the chains;
* slot     = the last hop's device number; function = the last hop's function number.

Functions of one card share the parent chain and the device number, so they share ``domain:bus:slot`` and
gpupass groups them into one GPU with its companions, as on the other platforms. The location path itself is
shown by ``gpupass gpus HOST --json`` (``extra.location_path``) and is what the scripts act on.
"""
from __future__ import annotations

import re
import zlib
from typing import Iterable

from gpupass.core.domain.pci import PciAddress

_ROOT = re.compile(r"^PCIROOT\(([0-9A-Fa-f]+)\)$")
_HOP = re.compile(r"^PCI\(([0-9A-Fa-f]{2})([0-9A-Fa-f]{2})\)$")


def split(path: str) -> tuple[int, str, int, int] | None:
    """(domain, parent chain, device, function) of a PCI location path; None for any other form (ACPI...)."""
    parts = path.split("#")
    if len(parts) < 2:
        return None
    root = _ROOT.match(parts[0])
    hop = _HOP.match(parts[-1])
    if not root or not hop or not all(_HOP.match(p) for p in parts[1:]):
        return None
    domain = int(root.group(1), 16)
    device, function = int(hop.group(1), 16), int(hop.group(2), 16)
    if domain > 0xFFFF or device > 0x1F or function > 0x7:
        return None
    return domain, "#".join(parts[:-1]).upper(), device, function


def address_map(paths: Iterable[str]) -> dict[str, PciAddress]:
    """A PCI address for each location path that has the PCI form (others are left out)."""
    parsed = {p: s for p in dict.fromkeys(paths) if (s := split(p)) is not None}
    buses: dict[tuple[int, str], int] = {}
    taken: dict[int, set[int]] = {}
    for domain, chain in sorted({(s[0], s[1]) for s in parsed.values()}):
        used = taken.setdefault(domain, set())
        bus = zlib.crc32(chain.encode()) & 0xFF
        while bus in used:
            bus = (bus + 1) & 0xFF
            if len(used) >= 256:
                raise ValueError(f"more than 256 PCI parent chains under PCIROOT({domain:x})")
        used.add(bus)
        buses[(domain, chain)] = bus
    return {p: PciAddress(s[0], buses[(s[0], s[1])], s[2], s[3]) for p, s in parsed.items()}
