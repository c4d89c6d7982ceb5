"""Parse libvirt node device XML (`virsh nodedev-dumpxml`) into the core's PCI model."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from gpupass.core.domain.pci import IommuGroup, PciAddress, PciFunction


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
    )
    group_element = cap.find("iommuGroup")
    group = None
    if group_element is not None:
        members = tuple(sorted(address_from_attributes(a) for a in group_element.findall("address")))
        group = IommuGroup(int(group_element.get("number", "0")), members)
    return NodeDevice(function, group)
