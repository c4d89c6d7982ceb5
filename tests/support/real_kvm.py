"""Read the real KVM-host outputs in tests/fixtures/real/kvm and turn them into libvirt test-driver hosts.

The outputs are `lspci -nn` IOMMU group listings (flungo's one-line form, the per-group block form, ls-iommu),
`lspci -v`/`-vv` blocks, kernel logs of BARs and sysfs `iommu_group/devices` listings, all as people
published them. Parsing is deliberately forgiving of the forms (Markdown backticks, code fences, prompts) and
strict about the data: a function only gets what its output shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gpupass.backends.kvm.lab import testhost
from gpupass.core.domain.pci import Bar, PciAddress

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "kvm"
HEADER_KEYS = ("Source", "Machine", "Shows", "Trimmed")

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# lspci's class names, for outputs printed without -nn (pci.ids class names).
_CLASS_BY_NAME = {
    "VGA compatible controller": 0x030000, "3D controller": 0x030200, "Display controller": 0x038000,
    "Audio device": 0x040300, "Processing accelerators": 0x120000, "PCI bridge": 0x060400,
    "Host bridge": 0x060000,
}
_VENDOR_BY_NAME = {"NVIDIA Corporation": 0x10DE, "Advanced Micro Devices": 0x1002, "Intel Corporation": 0x8086}

_ADDR = r"(?:(?P<domain>[0-9a-f]{4}):)?(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])"
_GROUP_HEADER = re.compile(r"^`?IOMMU [Gg]roup\s+(?P<group>\d+):?\s*$")
_GROUP_LINE = re.compile(r"^`?IOMMU [Gg]roup\s+(?P<group>\d+):?\s+" + _ADDR + r"\s+(?P<rest>.*)$")
_DEVICE_LINE = re.compile(r"^\s*" + _ADDR + r"\s+(?P<rest>\S.*)$")
_IDS = re.compile(r"\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\](?:\s*\(rev [0-9a-f]+\))?(?:\s*\(prog-if.*\))?\s*$")
_CLASS_NN = re.compile(r"^(?P<name>.+?) \[(?P<code>[0-9a-f]{4})\]:?\s+(?P<desc>.*)$")
_CLASS_PLAIN = re.compile(r"^(?P<name>[A-Za-z0-9 /-]+?): (?P<desc>.*)$")
_DRIVER = re.compile(r"^\s+Kernel driver in use: (?P<driver>\S+)")
_GROUP_FLAG = re.compile(r"IOMMU group:? (?P<group>\d+)")
_REGION = re.compile(r"^\s+(?:Region (?P<index>\d+): )?Memory at \S+ \((?P<bits>32|64)-bit, (?:non-)?prefetchable\)"
                     r"(?: \[disabled\])? \[size=(?P<size>\d+)(?P<unit>[KMGT]?)\]")
_DMESG_ID = re.compile(r"pci (?P<addr>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): \[(?P<vendor>[0-9a-f]{4}):"
                       r"(?P<device>[0-9a-f]{4})\] type \d+ class 0x(?P<cls>[0-9a-f]{6})")
_DMESG_REG = re.compile(r"pci (?P<addr>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): reg 0x(?P<reg>[0-9a-f]+): "
                        r"\[mem 0x(?P<start>[0-9a-f]+)-0x(?P<end>[0-9a-f]+)(?P<flags>[^\]]*)\]")
# lspci prints "<vendor> Device <id>" where pci.ids has no name for the id (H20, A100 80GB, L40S in this corpus).
_UNNAMED_DEVICE = re.compile(r"\bDevice (?P<device>[0-9a-f]{4})\b")
_VMM = re.compile(r"^(?P<key>Slot|Class|Vendor|Device|Driver|IOMMUGroup):\s+(?P<value>.*)$")
_LAST_ID = re.compile(r"\[(?P<id>[0-9a-f]{4})\]\s*$")
_SYSFS_MEMBER = re.compile(r"(?P<addr>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) -> \S*/(?P=addr)/?$")


@dataclass
class RealFunction:
    address: PciAddress
    class_code: int = 0
    vendor_id: int = 0
    device_id: int = 0
    name: str = ""
    driver: str | None = None
    group: int | None = None
    bars: list[Bar] = field(default_factory=list)


@dataclass
class RealOutput:
    path: Path
    header: dict[str, str]
    body: str
    functions: dict[PciAddress, RealFunction]
    shows_drivers: bool
    # Members of one IOMMU group listed through sysfs, where the output does not print the group's number.
    unnumbered_group: tuple[PciAddress, ...] = ()

    def gpu_addresses(self) -> list[PciAddress]:
        return sorted(a for a, f in self.functions.items() if f.class_code >> 16 in (0x03, 0x12))


def read(path: Path) -> RealOutput:
    text = path.read_text(encoding="utf-8")
    head, separator, body = text.partition("\n----\n")
    if not separator:
        raise ValueError(f"{path.name}: no '----' line between the source header and the output")
    header = {}
    for line in head.splitlines():
        key, _, value = line.partition(": ")
        header[key] = value
    output = RealOutput(path, header, body, {}, shows_drivers="Kernel driver in use:" in body or "\nDriver: " in body)
    _parse(output)
    return output


def corpus() -> list[RealOutput]:
    return [read(path) for path in sorted(CORPUS.glob("*.txt"))]


def _function(output: RealOutput, domain: str | None, bdf: str) -> RealFunction:
    address = PciAddress.parse(f"{domain or '0000'}:{bdf}")
    return output.functions.setdefault(address, RealFunction(address))


def _describe(function: RealFunction, rest: str) -> None:
    ids = _IDS.search(rest)
    if ids:
        function.vendor_id, function.device_id = int(ids["vendor"], 16), int(ids["device"], 16)
    nn = _CLASS_NN.match(rest)
    if nn:
        function.class_code = int(nn["code"], 16) << 8
        function.name = nn["desc"]
        return
    plain = _CLASS_PLAIN.match(rest)
    if plain and plain["name"] in _CLASS_BY_NAME:
        function.class_code = _CLASS_BY_NAME[plain["name"]]
        function.name = plain["desc"]
        if not function.vendor_id:
            function.vendor_id = next((v for n, v in _VENDOR_BY_NAME.items() if plain["desc"].startswith(n)), 0)
        unnamed = _UNNAMED_DEVICE.search(plain["desc"])
        if unnamed and function.vendor_id and not function.device_id:
            function.device_id = int(unnamed["device"], 16)


def _parse(output: RealOutput) -> None:
    group: int | None = None
    current: RealFunction | None = None
    sysfs_members: list[PciAddress] = []
    for line in output.body.splitlines():
        if (match := _VMM.match(line)) is not None:
            current = _vmm_field(output, current, match["key"], match["value"])
            continue
        if (match := _GROUP_HEADER.match(line)) is not None:
            group, current = int(match["group"]), None
            continue
        if (match := _GROUP_LINE.match(line)) is not None:
            current = _function(output, match["domain"], match["bdf"])
            current.group = int(match["group"])
            _describe(current, match["rest"])
            continue
        if (match := _DMESG_ID.search(line)) is not None:
            function = _function(output, None, match["addr"][5:])
            function.vendor_id, function.device_id = int(match["vendor"], 16), int(match["device"], 16)
            function.class_code = int(match["cls"], 16)
            continue
        if (match := _DMESG_REG.search(line)) is not None:
            function = _function(output, None, match["addr"][5:])
            size = int(match["end"], 16) - int(match["start"], 16) + 1
            function.bars.append(Bar((int(match["reg"], 16) - 0x10) // 4, size, "64bit" in match["flags"]))
            continue
        if (match := _SYSFS_MEMBER.search(line)) is not None:
            sysfs_members.append(PciAddress.parse(match["addr"]))
            continue
        if (match := _DEVICE_LINE.match(line)) is not None and not line.startswith((" ", "\t")) or (
                match is not None and group is not None):
            current = _function(output, match["domain"], match["bdf"])
            if group is not None:
                current.group = group
            _describe(current, match["rest"])
            continue
        if current is None:
            continue
        if (match := _DRIVER.match(line)) is not None:
            current.driver = match["driver"]
        elif (match := _REGION.match(line)) is not None:
            index = int(match["index"]) if match["index"] else len(current.bars)
            current.bars.append(Bar(index, int(match["size"]) * _UNITS[match["unit"]], match["bits"] == "64"))
        elif line.lstrip().startswith("Flags:") and (match := _GROUP_FLAG.search(line)) is not None:
            current.group = int(match["group"])
        elif (match := re.match(r"^\s+IOMMU group: (?P<group>\d+)", line)) is not None:
            current.group = int(match["group"])
    output.unnumbered_group = tuple(sorted(sysfs_members))


def _vmm_field(output: RealOutput, current: RealFunction | None, key: str, value: str) -> RealFunction | None:
    """One line of `lspci -vmm` (-nn): 'Slot:' starts a function, the other keys describe it."""
    if key == "Slot":
        domain, _, bdf = value.rpartition(":") if value.count(":") == 2 else ("", "", value)
        return _function(output, domain or None, bdf)
    if current is None:
        return None
    last_id = _LAST_ID.search(value)
    if key == "Class" and last_id:
        current.class_code = int(last_id["id"], 16) << 8
    elif key == "Vendor" and last_id:
        current.vendor_id = int(last_id["id"], 16)
    elif key == "Device":
        current.name = value
        if last_id:
            current.device_id = int(last_id["id"], 16)
    elif key == "Driver":
        current.driver = value.strip()
    elif key == "IOMMUGroup":
        current.group = int(value)
    return current


def host_functions(output: RealOutput, bound_driver: str | None = None) -> list[testhost.Function]:
    """The output's functions as a libvirt test-driver host: drivers as published, or `bound_driver` for every
    endpoint whose driver the output does not show (an assumption the caller names)."""
    functions = []
    group_of_unnumbered = None
    if output.unnumbered_group:
        # The sysfs listing names the members but not the group's number; the number used here is a label.
        group_of_unnumbered = 1_000
    for address, function in sorted(output.functions.items()):
        group = function.group
        if group is None and address in output.unnumbered_group:
            group = group_of_unnumbered
        driver = function.driver
        if driver is None and bound_driver is not None and not _known_driverless(function):
            driver = bound_driver
        functions.append(testhost.Function(str(address), function.vendor_id, function.device_id,
                                           function.class_code, function.name, "", driver, group))
    return functions


def _known_driverless(function: RealFunction) -> bool:
    """Functions that have no driver on a real host, as published outputs with drivers show: bridges
    (pcieport does not make them count, see core/domain/iommu.py) and AMD's PCIe Dummy Host Bridges (no
    'Driver:' line in davinci-resolve-checker-4-raven-lspci-vmm.txt)."""
    return function.class_code >> 8 == 0x0604 or "Dummy Host Bridge" in function.name
