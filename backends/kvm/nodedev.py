"""Parse libvirt node device XML (`virsh nodedev-dumpxml`) into the core's PCI model."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from gpupass.core.domain.pci import HEADER_BRIDGE, HEADER_CARDBUS, IommuGroup, PciAddress, PciFunction

# libvirt writes <capability type='pci-bridge'/> or 'cardbus-bridge' inside the pci capability when the config
# header is not a normal one (src/conf/node_device_conf.c, virNodeDeviceCapPCIDefFormat; names from the
# virPCIHeader enum in src/util/virpci.c). Nothing is written for an endpoint.
_HEADER_CAPABILITIES = {"pci-bridge": HEADER_BRIDGE, "cardbus-bridge": HEADER_CARDBUS}


@dataclass(frozen=True)
class NodeDevice:
    function: PciFunction
    iommu_group: IommuGroup | None


def address_from_attributes(element: ET.Element) -> PciAddress:
    return PciAddress(
        int(element.get("domain", "0"), 16),
        int(element.get("bus", "0"), 16),
        int(element.get("slot", "0"), 16),
        int(element.get("function", "0"), 16),
    )


def parse_pci_nodedev(xml: str) -> NodeDevice | None:
    root = ET.fromstring(xml)
    cap = root.find("capability[@type='pci']")
    if cap is None:
        return None
    address = PciAddress(*(int(cap.findtext(tag, "0"), 0) for tag in ("domain", "bus", "slot", "function")))
    vendor, product = cap.find("vendor"), cap.find("product")
    name = " ".join(part for part in ((product.text if product is not None else ""),) if part)
    function = PciFunction(
        address=address,
        vendor_id=int(vendor.get("id", "0"), 16) if vendor is not None else 0,
        device_id=int(product.get("id", "0"), 16) if product is not None else 0,
        class_code=int(cap.findtext("class", "0"), 16),
        name=(name or "").strip(),
        driver=root.findtext("driver/name"),
        header_type=next((_HEADER_CAPABILITIES[c.get("type", "")] for c in cap.findall("capability")
                          if c.get("type") in _HEADER_CAPABILITIES), None),
    )
    group_element = cap.find("iommuGroup")
    group = None
    if group_element is not None:
        members = tuple(sorted(address_from_attributes(a) for a in group_element.findall("address")))
        group = IommuGroup(int(group_element.get("number", "0")), members)
    return NodeDevice(function, group)


def drivers_in_node_file(text: str) -> dict[str, str]:
    """Host drivers by node device name, read from a libvirt test-driver host document (`<node>`).

    libvirt's test driver parses that document with virNodeDeviceDefParseXML, which reads a device's name, path,
    parent and capabilities but not <driver> (src/conf/node_device_conf.c); on a real host the node device
    driver fills it from sysfs. So for `test:///path` the file is the only record of which driver holds which
    device, and the IOMMU group rule (core/domain/iommu.py) needs it.
    """
    root = ET.fromstring(text)
    drivers = {}
    for device in root.iter("device"):
        name, driver = device.findtext("name"), device.findtext("driver/name")
        if name and driver:
            drivers[name] = driver
    return drivers
