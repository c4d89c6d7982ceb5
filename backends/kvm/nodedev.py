"""Parse libvirt node device XML (`virsh nodedev-dumpxml`) into the core's PCI model."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from gpupass.core import records
from gpupass.core.domain.pci import HEADER_BRIDGE, HEADER_CARDBUS, IommuGroup, PciAddress, PciFunction
from gpupass.core.domain.sharing import ShareMode, ShareType

# libvirt writes <capability type='pci-bridge'/> or 'cardbus-bridge' inside the pci capability when the config
# header is not a normal one (src/conf/node_device_conf.c, virNodeDeviceCapPCIDefFormat; names from the
# virPCIHeader enum in src/util/virpci.c). Nothing is written for an endpoint.
_HEADER_CAPABILITIES = {"pci-bridge": HEADER_BRIDGE, "cardbus-bridge": HEADER_CARDBUS}


@records.record(frozen=True)
class NodeDevice:
    function: PciFunction
    iommu_group: IommuGroup | None
    # The mediated-device types the card's host driver offers (vGPU types), from <capability type='mdev_types'>.
    share_types: tuple[ShareType, ...] = ()
    # SR-IOV (libvirt docs/formatnode.rst, pci capability): a physical function (PF) carries <capability
    # type='virt_functions' maxCount='N'> with one <address> per virtual function (VF) enabled now, and maxCount
    # from sysfs `sriov_totalvfs` (shown even with no VF enabled); a VF carries <capability type='phys_function'>
    # with its PF's address. libvirt writes them in src/conf/node_device_conf.c (virNodeDeviceCapPCIDefFormat).
    virtual_functions: tuple[PciAddress, ...] = ()
    max_virtual_functions: int | None = None
    physical_function: PciAddress | None = None
    is_physical_function: bool = False


@records.record(frozen=True)
class MediatedDevice:
    """A node device of capability mdev: one vGPU created on a parent card."""

    parent: str
    type_id: str
    uuid: str
    # libvirt's name of the node device (mdev_UUID_PARENT since libvirt 7.3), for the virsh commands gpupass names.
    name: str = ""


def nodedev_name(address: PciAddress) -> str:
    """libvirt's name of a PCI node device: pci_DDDD_BB_SS_F (as `virsh nodedev-list` prints it)."""
    return f"pci_{address.domain:04x}_{address.bus:02x}_{address.slot:02x}_{address.function:x}"


def address_from_attributes(element: ET.Element) -> PciAddress:
    return PciAddress(
        int(element.get("domain", "0"), 16),
        int(element.get("bus", "0"), 16),
        int(element.get("slot", "0"), 16),
        int(element.get("function", "0"), 16),
    )


def parse_pci_nodedev(xml: str, driver: str | None = None) -> NodeDevice | None:
    """The PCI function a node device describes, or None for another kind of device. `driver`: the one to give it
    when the document names none (a test-driver host's file knows it, see drivers_in_node_file).

    One walk over the children instead of ElementPath queries (`find("capability[@type='pci']")`): a fleet parses
    every PCI device of every host, and the queries cost more than the parse (tests/bench/bench_fleet.py)."""
    root = ET.fromstring(xml)
    cap = next((c for c in root if c.tag == "capability" and c.get("type") == "pci"), None)
    if cap is None:
        return None
    named = next((n for d in root if d.tag == "driver" for n in d if n.tag == "name"), None)
    if named is not None:
        driver = named.text or ""
    fields: dict[str, ET.Element] = {}  # the first child of each name, as find() gives
    capabilities = []  # the <capability> children, in order
    for child in cap:
        if child.tag == "capability":
            capabilities.append(child)
        else:
            fields.setdefault(child.tag, child)
    address = PciAddress(*(int(_text(fields, tag, "0"), 0) for tag in ("domain", "bus", "slot", "function")))
    vendor, product = fields.get("vendor"), fields.get("product")
    function = PciFunction(
        address=address,
        vendor_id=int(vendor.get("id", "0"), 16) if vendor is not None else 0,
        device_id=int(product.get("id", "0"), 16) if product is not None else 0,
        class_code=int(_text(fields, "class", "0"), 16),
        name=(product.text or "").strip() if product is not None else "",
        driver=driver,
        header_type=next((_HEADER_CAPABILITIES[c.get("type", "")] for c in capabilities
                          if c.get("type") in _HEADER_CAPABILITIES), None),
    )
    group_element = fields.get("iommuGroup")
    group = None
    if group_element is not None:
        members = tuple(sorted(address_from_attributes(a) for a in group_element if a.tag == "address"))
        group = IommuGroup(int(group_element.get("number", "0")), members)
    pf = next((a for c in capabilities if c.get("type") == "phys_function" for a in c if a.tag == "address"), None)
    vfs = next((c for c in capabilities if c.get("type") == "virt_functions"), None)
    max_count = vfs.get("maxCount", "") if vfs is not None else ""
    return NodeDevice(
        function, group, _mdev_types(capabilities),
        virtual_functions=tuple(sorted(address_from_attributes(a) for a in vfs if a.tag == "address"))
        if vfs is not None else (),
        max_virtual_functions=int(max_count) if max_count.isdigit() else None,
        physical_function=address_from_attributes(pf) if pf is not None else None,
        is_physical_function=vfs is not None,
    )


def _text(fields: dict[str, ET.Element], tag: str, default: str) -> str:
    """Element.findtext(tag, default) over the first children by name."""
    element = fields.get(tag)
    return default if element is None else element.text or ""


# NVIDIA's vGPU manager describes each type in its sysfs `description`, e.g. "num_heads=4, frl_config=45,
# framebuffer=2048M, max_resolution=5120x2880, max_instance=12" (`mdevctl types` on a Tesla P40, mdevctl issue
# #115; tests/fixtures/real/kvm/mdevctl-types-p40.txt). libvirt's node device XML has no description element
# (docs/formatnode.rst: name, deviceAPI, availableInstances), so these come only from sysfs when read locally.
_NVIDIA_DESCRIPTION = r"(\w+)=([^,\s]+)"  # compiled on first use (re's cache), not at import


def _mdev_types(capabilities: list[ET.Element]) -> tuple[ShareType, ...]:
    """<capability type='mdev_types'><type id='nvidia-46'><name>GRID P40-1Q</name><deviceAPI>vfio-pci</deviceAPI>
    <availableInstances>23</availableInstances></type>... (libvirt docs/formatnode.rst, "mdev_types"), from the pci
    capability's <capability> children."""
    types = []
    for element in (t for c in capabilities if c.get("type") == "mdev_types" for t in c if t.tag == "type"):
        available = element.findtext("availableInstances")
        types.append(ShareType(
            id=element.get("id", ""),
            name=(element.findtext("name") or "").strip(),
            mode=ShareMode.MDEV,
            available=int(available) if available and available.strip().isdigit() else None,
        ))
    return tuple(types)


def with_description(share_type: ShareType, description: str) -> ShareType:
    """Framebuffer and maximum instances from an NVIDIA vGPU type's sysfs description (see _NVIDIA_DESCRIPTION)."""
    facts = dict(re.findall(_NVIDIA_DESCRIPTION, description))
    framebuffer = facts.get("framebuffer", "")
    size = None
    if framebuffer[:-1].isdigit() and framebuffer[-1:] in ("M", "G"):
        size = int(framebuffer[:-1]) * (1 << (20 if framebuffer[-1] == "M" else 30))
    maximum = facts.get("max_instance")
    return records.replace(share_type, description=description.strip(), framebuffer_bytes=size,
                               max_instances=int(maximum) if maximum and maximum.isdigit() else None)


def parse_mdev_nodedev(xml: str, name: str = "") -> MediatedDevice | None:
    """<device><name>mdev_UUID_0000_03_00_0</name><parent>pci_0000_03_00_0</parent><capability type='mdev'>
    <type id='nvidia-46'/><uuid>UUID</uuid>... (libvirt docs/formatnode.rst, "mdev")."""
    root = ET.fromstring(xml)
    cap = root.find("capability[@type='mdev']")
    if cap is None:
        return None
    type_element = cap.find("type")
    return MediatedDevice(parent=root.findtext("parent", ""),
                          type_id=type_element.get("id", "") if type_element is not None else "",
                          uuid=(cap.findtext("uuid") or "").strip().lower(), name=name or root.findtext("name", ""))


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
