"""Node device XML and sysfs `resource` parsing, on text in the formats libvirt and Linux really write."""

from __future__ import annotations

import pytest

from gpupass.backends.kvm import sysfs
from gpupass.backends.kvm.nodedev import parse_pci_nodedev
from gpupass.core.domain.mmio import GiB, MiB
from gpupass.core.domain.pci import Bar, IommuGroup, PciAddress

A = PciAddress.parse

# `virsh nodedev-dumpxml pci_0000_41_00_0` on a host with an A100 PCIe (libvirt 9.0 layout).
A100_NODEDEV = """\
<device>
  <name>pci_0000_41_00_0</name>
  <path>/sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0</path>
  <parent>pci_0000_40_01_1</parent>
  <driver>
    <name>nvidia</name>
  </driver>
  <capability type='pci'>
    <class>0x030200</class>
    <domain>0</domain>
    <bus>65</bus>
    <slot>0</slot>
    <function>0</function>
    <product id='0x20f1'>GA100 [A100 PCIe 40GB]</product>
    <vendor id='0x10de'>NVIDIA Corporation</vendor>
    <iommuGroup number='38'>
      <address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/>
    </iommuGroup>
    <numa node='0'/>
    <pci-express>
      <link validity='cap' port='0' speed='16' width='16'/>
      <link validity='sta' speed='16' width='16'/>
    </pci-express>
  </capability>
</device>
"""

AUDIO_NODEDEV_NO_DRIVER = """\
<device>
  <name>pci_0000_01_00_1</name>
  <parent>pci_0000_00_01_0</parent>
  <capability type='pci'>
    <class>0x040300</class>
    <domain>0</domain>
    <bus>1</bus>
    <slot>0</slot>
    <function>1</function>
    <product id='0x22ba'/>
    <vendor id='0x10de'>NVIDIA Corporation</vendor>
    <iommuGroup number='14'>
      <address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>
      <address domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
      <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </iommuGroup>
  </capability>
</device>
"""

IOMMU_OFF_NODEDEV = """\
<device>
  <name>pci_0001_c1_00_0</name>
  <driver><name>vfio-pci</name></driver>
  <capability type='pci'>
    <class>0x030000</class>
    <domain>1</domain>
    <bus>193</bus>
    <slot>31</slot>
    <function>7</function>
    <product id='0x2684'>AD102 [GeForce RTX 4090]</product>
    <vendor id='0x10de'>NVIDIA Corporation</vendor>
  </capability>
</device>
"""

USB_NODEDEV = """\
<device>
  <name>usb_1_1</name>
  <parent>usb_usb1</parent>
  <capability type='usb_device'><bus>1</bus><device>2</device><product id='0x0001'/><vendor id='0x1d6b'/></capability>
</device>
"""


def test_parses_a_gpu_nodedev_with_its_iommu_group():
    parsed = parse_pci_nodedev(A100_NODEDEV)
    function = parsed.function
    assert function.address == A("0000:41:00.0")
    assert (function.vendor_id, function.device_id, function.class_code) == (0x10DE, 0x20F1, 0x030200)
    assert function.name == "GA100 [A100 PCIe 40GB]"
    assert function.driver == "nvidia"
    assert function.is_display and function.bars is None
    assert parsed.iommu_group == IommuGroup(38, (A("0000:41:00.0"),))


def test_group_members_are_sorted_and_missing_driver_and_product_name_are_none_and_empty():
    parsed = parse_pci_nodedev(AUDIO_NODEDEV_NO_DRIVER)
    assert parsed.function.driver is None
    assert parsed.function.name == ""
    assert parsed.function.device_id == 0x22BA
    assert parsed.iommu_group.members == (A("00:01.0"), A("01:00.0"), A("01:00.1"))
    assert not parsed.function.is_display


def test_a_driver_known_elsewhere_fills_in_only_where_the_document_names_none():
    # a test-driver host's file knows the drivers its node devices do not report (drivers_in_node_file)
    assert parse_pci_nodedev(AUDIO_NODEDEV_NO_DRIVER, driver="snd_hda_intel").function.driver == "snd_hda_intel"
    assert parse_pci_nodedev(A100_NODEDEV, driver="vfio-pci").function.driver == "nvidia"


def test_a_nodedev_without_iommu_group_has_none_and_high_addresses_parse():
    parsed = parse_pci_nodedev(IOMMU_OFF_NODEDEV)
    assert parsed.iommu_group is None
    assert parsed.function.address == PciAddress(1, 0xC1, 0x1F, 7)


def test_non_pci_nodedevs_are_ignored():
    assert parse_pci_nodedev(USB_NODEDEV) is None
    assert parse_pci_nodedev("<device><name>computer</name><capability type='system'/></device>") is None


# /sys/bus/pci/devices/0000:42:00.0/resource of an H100 PCIe: 6 BAR lines, the ROM line, then the
# 6 SR-IOV resources (all zero), each "start end flags" as 0x%016llx.
H100_RESOURCE = """\
0x00000000fa000000 0x00000000faffffff 0x0000000000040200
0x0000382000000000 0x0000383fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000384000000000 0x0000384001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fb000000 0x00000000fb07ffff 0x0000000000046200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
"""

# An RTX 4090: 16M BAR0, 32G resizable BAR1, 32M BAR3 and an I/O port BAR5 (flags 0x101 = IORESOURCE_IO).
RTX4090_RESOURCE = """\
0x00000000de000000 0x00000000deffffff 0x0000000000040200
0x0000006000000000 0x00000067ffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000006800000000 0x0000006801ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000e000 0x000000000000e07f 0x0000000000040101
0x00000000df000000 0x00000000df07ffff 0x0000000000046200
"""


def test_parses_an_h100_resource_file():
    assert sysfs.parse_resource(H100_RESOURCE) == (
        Bar(0, 16 * MiB, is_64bit=False),
        Bar(1, 128 * GiB, is_64bit=True),
        Bar(3, 32 * MiB, is_64bit=True),
    )


def test_io_port_bars_and_the_rom_line_are_not_memory_bars():
    assert sysfs.parse_resource(RTX4090_RESOURCE) == (
        Bar(0, 16 * MiB, is_64bit=False),
        Bar(1, 32 * GiB, is_64bit=True),
        Bar(3, 32 * MiB, is_64bit=True),
    )


def test_read_bars_and_boot_vga_from_a_sysfs_tree(tmp_path):
    device = tmp_path / "0000:42:00.0"
    device.mkdir()
    (device / "resource").write_text(H100_RESOURCE)
    (device / "boot_vga").write_text("0\n")
    other = tmp_path / "0000:01:00.0"
    other.mkdir()
    (other / "boot_vga").write_text("1\n")
    assert sum(bar.size for bar in sysfs.read_bars(A("42:00.0"), root=tmp_path)) == 128 * GiB + 48 * MiB
    assert sysfs.read_bars(A("01:00.0"), root=tmp_path) is None  # no resource file: unknown, not "none"
    assert sysfs.read_bars(A("99:00.0"), root=tmp_path) is None
    assert not sysfs.is_boot_vga(A("42:00.0"), root=tmp_path)
    assert sysfs.is_boot_vga(A("01:00.0"), root=tmp_path)
    assert not sysfs.is_boot_vga(A("99:00.0"), root=tmp_path)


@pytest.mark.parametrize("text", ["garbage\n", "0x1 0x2\n"])
def test_a_malformed_resource_file_means_unknown_bars(tmp_path, text):
    device = tmp_path / "0000:42:00.0"
    device.mkdir()
    (device / "resource").write_text(text)
    assert sysfs.read_bars(A("42:00.0"), root=tmp_path) is None


def test_header_type_comes_from_libvirts_bridge_capability():
    from gpupass.core.domain.pci import HEADER_BRIDGE

    xml = """<device><name>pci_0000_00_01_1</name><driver><name>pcieport</name></driver>
      <capability type='pci'><class>0x060400</class><domain>0</domain><bus>0</bus><slot>1</slot>
      <function>1</function><product id='0x1483'/><vendor id='0x1022'/><capability type='pci-bridge'/>
      </capability></device>"""
    parsed = parse_pci_nodedev(xml)
    assert parsed.function.header_type == HEADER_BRIDGE and parsed.function.is_bridge
    assert parsed.function.driver == "pcieport"


def test_drivers_are_read_from_a_test_driver_host_file():
    from gpupass.backends.kvm.nodedev import drivers_in_node_file

    text = """<node><device><name>pci_0000_00_17_0</name><driver><name>ahci</name></driver></device>
      <device><name>pci_0000_00_08_0</name></device></node>"""
    assert drivers_in_node_file(text) == {"pci_0000_00_17_0": "ahci"}
