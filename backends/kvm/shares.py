"""vGPU shares on KVM: mediated devices (mdev) of a parent card, given to a domain as <hostdev type='mdev'>.

A share is a mediated device the card's vendor driver creates (NVIDIA vGPU, Intel GVT-g), named by a UUID, of one
of the types the card offers (`mdev_supported_types`; Linux Documentation/driver-api/vfio-mediated-device.rst).
libvirt lists them as node devices of capability mdev and, since 7.3, defines and starts them itself:
virNodeDeviceDefineXML + virNodeDeviceCreate with `<device><parent>pci_..</parent><capability type='mdev'>
<type id='..'/><uuid>..</uuid></capability></device>` (libvirt docs/formatnode.rst, "mdev"; NEWS for 7.3.0).

gpupass gives a VM a free mediated device of the type when the host has one (created by an admin with mdevctl or
virsh, held by no domain), else creates one. The domain's gpupass record says which it created, so a release
undefines exactly those and leaves an admin's own devices on the host.

The steps' payloads are in steps.py (CreateMdev, RemoveMdev, DefineShare).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gpupass.core.domain.pci import PciAddress

# gpupass's namespace for the UUIDs of the mediated devices it creates: one UUID per (host, VM, card, type), so a
# plan shows the very UUID the assign will create, and a plan from a snapshot equals the live one.
_UUID_NAMESPACE = "4f0c6a53-6c1e-4f43-9a55-1a4f2b0b6d13"


def mdev_uuid(host: str, vm: str, parent: PciAddress, type_id: str) -> str:
    import uuid  # here: planning a share needs it, reading a host does not

    return str(uuid.uuid5(uuid.UUID(_UUID_NAMESPACE), f"{host}|{vm}|{parent}|{type_id}"))


def mdev_definition(parent: str, type_id: str, uuid: str) -> str:
    """The node device XML virNodeDeviceDefineXML takes for a mediated device (libvirt docs/formatnode.rst)."""
    device = ET.Element("device")
    ET.SubElement(device, "parent").text = parent
    capability = ET.SubElement(device, "capability", {"type": "mdev"})
    ET.SubElement(capability, "type", {"id": type_id})
    ET.SubElement(capability, "uuid").text = uuid
    ET.indent(device)
    return ET.tostring(device, encoding="unicode")
