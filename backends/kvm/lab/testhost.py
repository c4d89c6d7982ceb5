"""Build libvirt test-driver host documents (`test:///path/host.xml`) for tests, benchmarks and demos.

Everything is built with ElementTree, so any VM name (quotes, '<', '&', ']]>', unicode) stays text.
"""

from __future__ import annotations

import uuid as uuid_module
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from gpupass.core.domain.pci import PciAddress

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
RUNNING, SHUTOFF = 1, 5


@dataclass(frozen=True)
class Function:
    """One PCI function of the host; functions with the same `group` share an IOMMU group."""

    address: str
    vendor_id: int
    device_id: int
    class_code: int
    product: str = ""
    vendor: str = ""
    driver: str | None = None
    group: int | None = None
    # SR-IOV (libvirt docs/formatnode.rst): a PF's enabled VFs and sriov_totalvfs, or a VF's PF.
    virtual_functions: tuple[str, ...] = ()
    max_virtual_functions: int | None = None
    physical_function: str | None = None

    @property
    def pci(self) -> PciAddress:
        return PciAddress.parse(self.address)


def gpu(address: str, device_id: int, product: str, group: int | None, *, class_code: int = 0x030200,
        driver: str | None = "nvidia") -> Function:
    return Function(address, 0x10DE, device_id, class_code, product, "NVIDIA Corporation", driver, group)


def audio(address: str, device_id: int, group: int | None, product: str = "High Definition Audio Controller"
          ) -> Function:
    return Function(address, 0x10DE, device_id, 0x040300, product, "NVIDIA Corporation", "snd_hda_intel", group)


def other(address: str, class_code: int = 0x020000, group: int | None = None, product: str = "Ethernet Controller"
          ) -> Function:
    return Function(address, 0x8086, 0x1533, class_code, product, "Intel Corporation", "igb", group)


def _hex_address(parent: ET.Element, address: PciAddress) -> None:
    ET.SubElement(parent, "address", {
        "domain": f"0x{address.domain:04x}", "bus": f"0x{address.bus:02x}",
        "slot": f"0x{address.slot:02x}", "function": f"0x{address.function:x}",
    })


def nodedev(function: Function, members: Sequence[PciAddress]) -> ET.Element:
    address = function.pci
    device = ET.Element("device")
    ET.SubElement(device, "name").text = (
        f"pci_{address.domain:04x}_{address.bus:02x}_{address.slot:02x}_{address.function:x}")
    ET.SubElement(device, "parent").text = "computer"
    if function.driver:
        ET.SubElement(ET.SubElement(device, "driver"), "name").text = function.driver
    cap = ET.SubElement(device, "capability", {"type": "pci"})
    ET.SubElement(cap, "class").text = f"0x{function.class_code:06x}"
    for tag, value in (("domain", address.domain), ("bus", address.bus), ("slot", address.slot),
                       ("function", address.function)):
        ET.SubElement(cap, tag).text = str(value)
    ET.SubElement(cap, "product", {"id": f"0x{function.device_id:04x}"}).text = function.product or None
    ET.SubElement(cap, "vendor", {"id": f"0x{function.vendor_id:04x}"}).text = function.vendor or None
    if function.physical_function:
        _hex_address(ET.SubElement(cap, "capability", {"type": "phys_function"}),
                     PciAddress.parse(function.physical_function))
    if function.virtual_functions or function.max_virtual_functions is not None:
        attributes = {} if function.max_virtual_functions is None else {"maxCount": str(function.max_virtual_functions)}
        vfs = ET.SubElement(cap, "capability", {"type": "virt_functions", **attributes})
        for vf in function.virtual_functions:
            _hex_address(vfs, PciAddress.parse(vf))
    if function.group is not None:
        group = ET.SubElement(cap, "iommuGroup", {"number": str(function.group)})
        for member in members:
            _hex_address(group, member)
    return device


def domain(name: str, *, running: bool = False, machine: str = "q35", efi: bool = True, memory_mib: int = 4096,
           hostdevs: Iterable[str] = (), uuid: str | None = None) -> ET.Element:
    root = ET.Element("domain", {"type": "test"})
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "uuid").text = uuid or str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, "gpupass:" + name))
    ET.SubElement(root, "memory", {"unit": "MiB"}).text = str(memory_mib)
    ET.SubElement(root, "vcpu").text = "2"
    os_element = ET.SubElement(root, "os", {"firmware": "efi"} if efi else {})
    ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": machine}).text = "hvm"
    devices = ET.SubElement(root, "devices")
    ET.SubElement(devices, "controller", {"type": "pci", "index": "0",
                                          "model": "pcie-root" if "q35" in machine else "pci-root"})
    for text in hostdevs:
        hostdev = ET.SubElement(devices, "hostdev", {"mode": "subsystem", "type": "pci", "managed": "yes"})
        _hex_address(ET.SubElement(hostdev, "source"), PciAddress.parse(text))
    ET.SubElement(root, f"{{{TEST_NS}}}runstate").text = str(RUNNING if running else SHUTOFF)
    return root


def host_xml(functions: Sequence[Function], domains: Sequence[ET.Element]) -> str:
    ET.register_namespace("test", TEST_NS)
    node = ET.Element("node")
    computer = ET.SubElement(node, "device")
    ET.SubElement(computer, "name").text = "computer"
    hardware = ET.SubElement(ET.SubElement(computer, "capability", {"type": "system"}), "hardware")
    ET.SubElement(hardware, "uuid").text = "4c4c4544-0047-4d10-8047-b4c04f4d3232"  # the test driver needs one
    groups: dict[int, list[PciAddress]] = {}
    for function in functions:
        if function.group is not None:
            groups.setdefault(function.group, []).append(function.pci)
    for function in functions:
        node.append(nodedev(function, sorted(groups.get(function.group, ()))))
    node.extend(domains)
    ET.indent(node)
    return ET.tostring(node, encoding="unicode") + "\n"


def write_host(path: Path, functions: Sequence[Function], domains: Sequence[ET.Element]) -> str:
    """Write the host file and return its `test://` URI."""
    path.write_text(host_xml(functions, domains), encoding="utf-8")
    return f"test://{path.resolve()}"


def generated_host(gpus: int = 8, other_functions: int = 200, domains: int = 100) -> tuple[list[Function],
                                                                                            list[ET.Element]]:
    """A big host: `gpus` H100s with an audio companion each, other PCI functions, many off VMs."""
    functions: list[Function] = []
    for index in range(gpus):
        bus = 0x10 + index
        functions.append(gpu(f"0000:{bus:02x}:00.0", 0x2331, "GH100 [H100 PCIe]", 100 + index))
        functions.append(audio(f"0000:{bus:02x}:00.1", 0x22BA, 100 + index))
    for index in range(other_functions):
        bus, slot = 0x80 + index // 32, index % 32
        functions.append(other(f"0000:{bus:02x}:{slot:02x}.0", group=1000 + index))
    vms = [domain(f"vm-{index:03d}") for index in range(domains)]
    return functions, vms
