"""The SR-IOV VF definitions gpupass writes, held by a REAL libvirtd (QEMU driver, unprivileged session daemon).

This machine has no SR-IOV device, so the daemon's node devices hold no PF with VFs: what can be checked against the
real daemon is the domain side. A VF goes into the domain as a PCI <hostdev> of its own, managed='yes' for a plain VF
(libvirt binds vfio-pci at start) and managed='no' for an NVIDIA vGPU VF, which must stay on the nvidia driver
(backends/kvm/domxml.py, AssignSettings.managed). The daemon must keep both as written, with gpupass's record.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gpupass.backends.kvm import domxml
from gpupass.core.domain.pci import PciAddress, PciFunction

libvirt = pytest.importorskip("libvirt")

DOMAIN = ("<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
          "<os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>"
          "<devices><controller type='pci' index='0' model='pcie-root'/></devices></domain>")


@pytest.mark.parametrize("managed, vf", [(True, "0000:00:02.1"), (False, "0000:41:00.4")])
def test_the_daemon_keeps_a_vf_hostdev_as_gpupass_writes_it(libvirt_conn, managed, vf):
    name = f"vf-{'managed' if managed else 'unmanaged'}"
    function = PciFunction(PciAddress.parse(vf), 0x10DE, 0x2236, 0x030200)
    edit = domxml.add_gpus(DOMAIN.format(name=name), domxml.AssignSettings(((function,),), managed=managed))
    xml = domxml.with_vf_vgpu_type(edit.xml, vf, "591") if not managed else edit.xml
    dom = libvirt_conn.defineXML(xml)
    kept = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    facts = domxml.read_facts(kept)
    assert [str(a) for a in facts.hostdevs] == [vf] and [str(a) for a in facts.recorded] == [vf]
    hostdev = ET.fromstring(kept).find("devices/hostdev[@type='pci']")
    assert hostdev is not None and hostdev.get("managed") == ("yes" if managed else "no")
    if not managed:  # the record of the vGPU type gpupass set survives the daemon's round trip
        assert domxml.vf_vgpu_types_set_by_gpupass(domxml.parse(kept)) == {vf: "591"}
    # the release gpupass plans gives back exactly the definition it started from
    released = domxml.remove_gpus(kept, {PciAddress.parse(vf)})
    dom = libvirt_conn.defineXML(released.xml)
    after = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert domxml.read_facts(after).hostdevs == () and "gpupass" not in after
