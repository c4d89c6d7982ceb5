"""VM names (and other text) chosen to break string-built XML cannot change the structure gpupass writes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gpupass.backends.kvm import domxml
from gpupass.core.domain.mmio import GiB
from gpupass.core.domain.pci import PciAddress, PciFunction

A = PciAddress.parse
GPU = PciFunction(A("0000:01:00.0"), 0x10DE, 0x2684, 0x030000)
AUDIO = PciFunction(A("0000:01:00.1"), 0x10DE, 0x22BA, 0x040300)

HOSTILE = {
    "quotes": "it's a \"vm\"",
    "angle-amp": "</name><devices><hostdev/></devices><name>x & y",
    "cdata-end": "end]]><evil/><![CDATA[",
    "comment": "--><!-- x",
    "entity": "&amp;&lt;&#x41;&unknown;",
    "unicode": "ünïcødé—名前—🚀",
    "long": "n" * 1000 + "<>&'\"" + "m" * 500,
    "attr-like": "a' managed='no",
}


def domain_with(name: str) -> str:
    root = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = name
    ET.SubElement(root, "memory", {"unit": "KiB"}).text = "1048576"
    os_element = ET.SubElement(root, "os")
    ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": "q35"}).text = "hvm"
    devices = ET.SubElement(root, "devices")
    ET.SubElement(devices, "controller", {"type": "pci", "index": "0", "model": "pcie-root"})
    return ET.tostring(root, encoding="unicode")


def shape(xml: str) -> list[tuple[str, ...]]:
    """Every element's path from the root: the document's structure without its text."""
    paths = []

    def walk(element: ET.Element, prefix: tuple[str, ...]) -> None:
        path = (*prefix, element.tag)
        paths.append(path)
        for child in element:
            walk(child, path)

    walk(ET.fromstring(xml), ())
    return sorted(paths)


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_name_stays_text_through_assign_and_release(name):
    original = domain_with(name)
    edit = domxml.add_gpus(original, domxml.AssignSettings(
        ((GPU, AUDIO),), set_efi=True, mmio_window_bytes=64 * GiB, hide_hypervisor=True))
    root = ET.fromstring(edit.xml)
    assert root.findtext("name") == name and root.findtext("description") == name
    assert root.find("name").attrib == {} and len(root.find("name")) == 0
    assert domxml.read_facts(edit.xml).name == name
    hostdevs = root.findall("devices/hostdev")
    assert len(hostdevs) == 2 and all(h.get("managed") == "yes" for h in hostdevs)
    # Nothing but what gpupass adds: the structure equals a harmless name's after the same edit.
    harmless = domxml.add_gpus(domain_with("plain"), domxml.AssignSettings(
        ((GPU, AUDIO),), set_efi=True, mmio_window_bytes=64 * GiB, hide_hypervisor=True))
    assert shape(edit.xml) == shape(harmless.xml)

    back = domxml.remove_gpus(edit.xml, {GPU.address, AUDIO.address})
    assert ET.canonicalize(back.xml) == ET.canonicalize(original)
