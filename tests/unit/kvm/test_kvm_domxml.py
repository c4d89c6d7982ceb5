"""Pure tests of the KVM backend's structural domain XML edits (no libvirt, no I/O)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gpupass.backends.kvm import domxml
from gpupass.core.domain.inventory import Firmware
from gpupass.core.domain.mmio import GiB, KiB, MiB
from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.core.errors import NotSupported

A = PciAddress.parse
QEMU = domxml.QEMU_NS
GP = domxml.NS

H100 = PciFunction(A("0000:42:00.0"), 0x10DE, 0x2331, 0x030200, name="GH100 [H100 PCIe]")
RTX4090 = PciFunction(A("0000:01:00.0"), 0x10DE, 0x2684, 0x030000)
RTX4090_AUDIO = PciFunction(A("0000:01:00.1"), 0x10DE, 0x22BA, 0x040300)
CARD_4090 = (RTX4090, RTX4090_AUDIO)
CARD_H100 = (H100,)


def domain(*, name: str = "vm1", machine: str = "pc-q35-7.2", os_attrs: str = "", features: str | None = None,
           devices: str | None = None, metadata: str = "", tail: str = "", extra_ns: str = "") -> str:
    root_model = "pcie-root" if "q35" in machine else "pci-root"
    if devices is None:
        devices = f"<controller type='pci' index='0' model='{root_model}'/>"
    feats = "" if features is None else f"<features>{features}</features>"
    return (
        f"<domain type='kvm'{extra_ns}><name>{name}</name><uuid>0b0e4f56-6c3d-4d1e-9d83-3d0b2cf1a001</uuid>"
        f"{metadata}<memory unit='KiB'>16777216</memory><vcpu>4</vcpu>"
        f"<os{os_attrs}><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/></os>{feats}"
        f"<devices>{devices}</devices>{tail}</domain>"
    )


def canonical(xml: str) -> str:
    """Whitespace-insensitive canonical form: equal strings mean equal documents."""
    return ET.canonicalize(xml, strip_text=True)


def root_of(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def hostdev_guest_addresses(xml: str) -> dict[PciAddress, dict[str, str]]:
    result = {}
    for hostdev, address in domxml.pci_hostdevs(root_of(xml)):
        guest = hostdev.find("address")
        result[address] = dict(guest.attrib) if guest is not None else {}
    return result


def assign(xml: str, *cards, **settings) -> domxml.Edit:
    return domxml.add_gpus(xml, domxml.AssignSettings(tuple(cards), **settings))


def release(xml: str, *addresses: PciAddress) -> domxml.Edit:
    return domxml.remove_gpus(xml, set(addresses))


# -- assign then release restores the original ------------------------------------------------------

ORIGINALS = {
    "q35-bios-bare": domain(),
    "q35-efi": domain(os_attrs=" firmware='efi'", features="<acpi/><apic/>"),
    "i440fx": domain(machine="pc-i440fx-7.2",
                     devices="<controller type='pci' index='0' model='pci-root'/>"
                             "<interface type='network'><source network='default'/>"
                             "<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></interface>"),
    "other-metadata": domain(metadata="<metadata><app:info xmlns:app='https://example.com/app'>keep me</app:info>"
                                      "</metadata>"),
    "qemu-commandline": domain(extra_ns=f" xmlns:qemu='{QEMU}'",
                               tail="<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='isa-debugcon'/>"
                                    "</qemu:commandline>"),
}
SETTINGS = {
    "plain": {},
    "efi": {"set_efi": True},
    "mmio": {"mmio_window_bytes": 256 * GiB},
    "hide": {"hide_hypervisor": True},
    "everything": {"set_efi": True, "mmio_window_bytes": 512 * GiB, "hide_hypervisor": True},
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
@pytest.mark.parametrize("original", ORIGINALS.values(), ids=ORIGINALS.keys())
def test_assign_then_release_restores_the_original(original, settings):
    edit = assign(original, CARD_4090, CARD_H100, **settings)
    assert canonical(edit.xml) != canonical(original)
    assert set(domxml.read_facts(edit.xml).hostdevs) == {RTX4090.address, RTX4090_AUDIO.address, H100.address}

    back = release(edit.xml, RTX4090.address, RTX4090_AUDIO.address, H100.address)

    assert canonical(back.xml) == canonical(original)


def test_release_changes_are_described():
    edit = assign(domain(), CARD_H100, set_efi=True, mmio_window_bytes=256 * GiB, hide_hypervisor=True)
    back = release(edit.xml, H100.address)
    assert "remove <hostdev> 0000:42:00.0" in back.changes
    assert any("restore firmware" in change for change in back.changes)
    assert any("MMIO aperture" in change for change in back.changes)
    assert any("hypervisor signature" in change for change in back.changes)


def test_assigning_a_card_the_vm_already_holds_adds_nothing():
    once = assign(domain(), CARD_4090)
    twice = assign(once.xml, CARD_4090)
    assert twice.changes == []
    assert canonical(twice.xml) == canonical(once.xml)


# -- companions: one multifunction device -----------------------------------------------------------

def test_companions_on_q35_sit_on_a_new_pcie_root_port_as_one_multifunction_device():
    original = domain(devices="<controller type='pci' index='0' model='pcie-root'/>"
                              "<controller type='pci' index='1' model='pcie-root-port'/>"
                              "<controller type='pci' index='2' model='pcie-root-port'/>")
    edit = assign(original, CARD_4090)
    root = root_of(edit.xml)
    ports = root.findall("devices/controller[@model='pcie-root-port']")
    assert [p.get("index") for p in ports] == ["1", "2", "3"]
    guests = hostdev_guest_addresses(edit.xml)
    assert guests[RTX4090.address] == {"type": "pci", "domain": "0x0000", "bus": "0x03", "slot": "0x00",
                                       "function": "0x0", "multifunction": "on"}
    assert guests[RTX4090_AUDIO.address] == {"type": "pci", "domain": "0x0000", "bus": "0x03", "slot": "0x00",
                                             "function": "0x1"}
    assert all(h.get("managed") == "yes" for h, _ in domxml.pci_hostdevs(root))
    assert root.find(f"metadata/{{{GP}}}assignment/{{{GP}}}controller").get("index") == "3"
    assert any("PCIe root port 3" in change for change in edit.changes)


def test_single_function_gpu_on_q35_gets_its_own_recorded_root_port():
    """Left to libvirt, a hostdev without a guest address may make libvirt add a root port at define
    time that gpupass would not know to remove on release."""
    edit = assign(domain(), CARD_H100)
    root = root_of(edit.xml)
    assert [p.get("index") for p in root.findall("devices/controller[@model='pcie-root-port']")] == ["1"]
    assert hostdev_guest_addresses(edit.xml) == {H100.address: {"type": "pci", "domain": "0x0000", "bus": "0x01",
                                                                "slot": "0x00", "function": "0x0"}}
    assert root.find(f"metadata/{{{GP}}}assignment/{{{GP}}}controller").get("index") == "1"
    assert root_of(release(edit.xml, H100.address).xml).find("devices/controller[@model='pcie-root-port']") is None


def test_single_function_gpu_on_i440fx_is_left_to_libvirts_addressing():
    edit = assign(domain(machine="pc-i440fx-7.2"), CARD_H100)
    assert hostdev_guest_addresses(edit.xml) == {H100.address: {}}
    assert root_of(edit.xml).find("devices/controller[@model='pcie-root-port']") is None


def test_a_card_the_vm_holds_only_partly_is_refused_not_split():
    only_gpu = assign(domain(), (RTX4090,))
    with pytest.raises(NotSupported, match="without the rest of the card"):
        assign(only_gpu.xml, CARD_4090)


def test_a_multifunction_card_on_a_full_i440fx_bus_is_refused():
    used = "".join(
        f"<interface type='network'><source network='n{slot}'/>"
        f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/></interface>"
        for slot in range(0x10, 0x20)
    )
    original = domain(machine="pc-i440fx-7.2", devices="<controller type='pci' index='0' model='pci-root'/>" + used)
    with pytest.raises(NotSupported, match="no free slot"):
        assign(original, CARD_4090)


def test_companions_on_i440fx_take_one_free_slot_of_bus_0():
    used = "".join(
        f"<interface type='network'><source network='n{slot}'/>"
        f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/></interface>"
        for slot in (0x03, 0x10, 0x11)
    )
    original = domain(machine="pc-i440fx-7.2", devices="<controller type='pci' index='0' model='pci-root'/>" + used)
    edit = assign(original, CARD_4090)
    guests = hostdev_guest_addresses(edit.xml)
    assert guests[RTX4090.address]["slot"] == guests[RTX4090_AUDIO.address]["slot"] == "0x12"
    assert guests[RTX4090.address]["bus"] == "0x00"
    assert guests[RTX4090.address].get("multifunction") == "on"
    assert "multifunction" not in guests[RTX4090_AUDIO.address]
    assert [g["function"] for g in guests.values()] == ["0x0", "0x1"]
    assert root_of(edit.xml).findall("devices/controller[@model='pcie-root-port']") == []


def test_two_multifunction_cards_on_q35_get_two_root_ports():
    other = (PciFunction(A("0000:02:00.0"), 0x10DE, 0x2204, 0x030000),
             PciFunction(A("0000:02:00.1"), 0x10DE, 0x228B, 0x040300))
    edit = assign(domain(), CARD_4090, other)
    guests = hostdev_guest_addresses(edit.xml)
    assert guests[A("01:00.0")]["bus"] == guests[A("01:00.1")]["bus"] == "0x01"
    assert guests[A("02:00.0")]["bus"] == guests[A("02:00.1")]["bus"] == "0x02"


# -- EFI --------------------------------------------------------------------------------------------

def test_efi_switch_adds_acpi_and_release_reverts_both():
    original = domain()  # BIOS, no <features>
    edit = assign(original, CARD_H100, set_efi=True)
    root = root_of(edit.xml)
    assert root.find("os").get("firmware") == "efi"
    assert root.find("features/acpi") is not None
    assert domxml.read_facts(edit.xml).firmware is Firmware.EFI
    assert "enable <acpi/> (UEFI needs it on x86)" in edit.changes
    back = root_of(release(edit.xml, H100.address).xml)
    assert back.find("os").get("firmware") is None
    assert back.find("features") is None


def test_efi_switch_keeps_existing_features_and_an_existing_acpi():
    with_acpi = domain(features="<acpi/><apic/>")
    edit = assign(with_acpi, CARD_H100, set_efi=True)
    assert not any("acpi" in change for change in edit.changes)
    assert canonical(release(edit.xml, H100.address).xml) == canonical(with_acpi)

    without_acpi = domain(features="<pae/>")
    edit = assign(without_acpi, CARD_H100, set_efi=True)
    assert [child.tag for child in root_of(edit.xml).find("features")] == ["pae", "acpi"]
    assert canonical(release(edit.xml, H100.address).xml) == canonical(without_acpi)


def test_efi_switch_refuses_an_explicit_loader():
    original = domain().replace("<boot dev='hd'/>", "<loader readonly='yes' type='rom'>/usr/share/seabios/bios.bin</loader>")
    with pytest.raises(NotSupported):
        assign(original, CARD_H100, set_efi=True)


@pytest.mark.parametrize("os_xml, firmware", [
    ("<os firmware='efi'><type>hvm</type></os>", Firmware.EFI),
    ("<os><type>hvm</type><loader type='pflash'>/x/code.fd</loader></os>", Firmware.EFI),
    ("<os><type>hvm</type><loader>/usr/share/OVMF/OVMF_CODE.fd</loader></os>", Firmware.EFI),
    ("<os><type>hvm</type></os>", Firmware.BIOS),
    ("", Firmware.BIOS),
])
def test_firmware_is_read_from_os_and_loader(os_xml, firmware):
    xml = f"<domain type='kvm'><name>x</name>{os_xml}<devices/></domain>"
    assert domxml.read_facts(xml).firmware is firmware


# -- hiding the hypervisor --------------------------------------------------------------------------

def test_hiding_sets_kvm_hidden_and_a_hyperv_vendor_id():
    edit = assign(domain(features="<acpi/>"), CARD_H100, hide_hypervisor=True)
    root = root_of(edit.xml)
    assert root.find("features/kvm/hidden").get("state") == "on"
    vendor = root.find("features/hyperv/vendor_id")
    assert vendor.get("state") == "on" and vendor.get("value") == domxml.HYPERV_VENDOR_ID
    assert len(domxml.HYPERV_VENDOR_ID) <= 12
    assert domxml.read_facts(edit.xml).hypervisor_hidden


def test_hiding_restores_the_previous_values_of_existing_settings():
    original = domain(features="<acpi/><hyperv mode='custom'><relaxed state='on'/>"
                               "<vendor_id state='off' value='KVMKVMKVM'/></hyperv>"
                               "<kvm><hidden state='off'/><hint-dedicated state='on'/></kvm>")
    edit = assign(original, CARD_H100, hide_hypervisor=True)
    root = root_of(edit.xml)
    assert root.find("features/kvm/hidden").get("state") == "on"
    assert root.find("features/hyperv/vendor_id").get("value") == domxml.HYPERV_VENDOR_ID
    assert root.find("features/hyperv/relaxed") is not None
    assert canonical(release(edit.xml, H100.address).xml) == canonical(original)


# -- the MMIO window --------------------------------------------------------------------------------

def test_mmio_window_sets_pcihole64_and_the_ovmf_fw_cfg_argument():
    edit = assign(domain(), CARD_H100, mmio_window_bytes=256 * GiB)
    root = root_of(edit.xml)
    hole = root.find("devices/controller[@model='pcie-root']/pcihole64")
    assert hole.get("unit") == "KiB" and int(hole.text) * KiB == 256 * GiB
    args = [arg.get("value") for arg in root.findall(f"{{{QEMU}}}commandline/{{{QEMU}}}arg")]
    assert args == ["-fw_cfg", f"name=opt/ovmf/X-PciMmio64Mb,string={256 * GiB // MiB}"]
    assert domxml.read_facts(edit.xml).mmio_window_bytes == 256 * GiB


def test_mmio_window_on_i440fx_goes_on_pci_root():
    edit = assign(domain(machine="pc-i440fx-7.2"), CARD_H100, mmio_window_bytes=64 * GiB)
    hole = root_of(edit.xml).find("devices/controller[@model='pci-root']/pcihole64")
    assert int(hole.text) * KiB == 64 * GiB


def test_mmio_window_keeps_foreign_qemu_arguments_and_restores_an_earlier_window():
    original = domain(
        extra_ns=f" xmlns:qemu='{QEMU}'",
        devices="<controller type='pci' index='0' model='pcie-root'><pcihole64 unit='KiB'>33554432</pcihole64>"
                "</controller>",
        tail="<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='isa-debugcon'/>"
             "<qemu:arg value='-fw_cfg'/><qemu:arg value='name=opt/ovmf/X-PciMmio64Mb,string=32768'/>"
             "<qemu:env name='KEEP' value='1'/></qemu:commandline>",
    )
    assert domxml.read_facts(original).mmio_window_bytes == 32 * GiB
    edit = assign(original, CARD_H100, mmio_window_bytes=256 * GiB)
    root = root_of(edit.xml)
    args = [arg.get("value") for arg in root.findall(f"{{{QEMU}}}commandline/{{{QEMU}}}arg")]
    assert args == ["-device", "isa-debugcon", "-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=262144"]
    assert root.find(f"{{{QEMU}}}commandline/{{{QEMU}}}env").get("name") == "KEEP"
    back = release(edit.xml, H100.address).xml
    assert canonical(back) == canonical(original)
    assert domxml.read_facts(back).mmio_window_bytes == 32 * GiB


def test_qemu_namespace_prefix_and_foreign_metadata_survive():
    original = domain(
        extra_ns=f" xmlns:qemu='{QEMU}'",
        metadata="<metadata><libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>"
                 "<libosinfo:os id='http://ubuntu.com/ubuntu/22.04'/></libosinfo:libosinfo></metadata>",
        tail="<qemu:commandline><qemu:arg value='-s'/></qemu:commandline>",
    )
    edit = assign(original, CARD_H100, mmio_window_bytes=128 * GiB)
    assert "<qemu:commandline>" in edit.xml and "<libosinfo:libosinfo" in edit.xml
    metadata = root_of(edit.xml).find("metadata")
    assert [child.tag for child in metadata] == ["{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo",
                                                 f"{{{GP}}}assignment"]
    assert metadata.find(f"{{{GP}}}assignment").get("created-metadata") == "no"
    back = release(edit.xml, H100.address).xml
    assert canonical(back) == canonical(original)
    assert "<qemu:commandline>" in back and "<libosinfo:libosinfo" in back


def test_created_metadata_is_placed_after_name_and_uuid_and_removed_on_release():
    edit = assign(domain(), CARD_H100)
    tags = [child.tag for child in root_of(edit.xml)]
    assert tags[:3] == ["name", "uuid", "metadata"]
    assert root_of(release(edit.xml, H100.address).xml).find("metadata") is None


# -- partial release ---------------------------------------------------------------------------------

def test_partial_release_keeps_the_other_gpu_its_record_and_the_settings():
    original = domain()
    both = assign(original, CARD_4090, CARD_H100, mmio_window_bytes=256 * GiB, set_efi=True).xml
    after_one = release(both, RTX4090.address, RTX4090_AUDIO.address)
    root = root_of(after_one.xml)
    facts = domxml.read_facts(after_one.xml)
    assert facts.hostdevs == (H100.address,)
    assert facts.recorded == (H100.address,)
    # The 4090's root port (1) went with it; the H100's (2) stays, still recorded.
    assert [p.get("index") for p in root.findall("devices/controller[@model='pcie-root-port']")] == ["2"]
    assert [c.get("index") for c in root.findall(f"metadata/{{{GP}}}assignment/{{{GP}}}controller")] == ["2"]
    assert "remove PCIe root port 1 that gpupass added" in after_one.changes
    # The VM still holds a GPU, so the settings made for it stay.
    assert facts.firmware is Firmware.EFI and facts.mmio_window_bytes == 256 * GiB

    after_both = release(after_one.xml, H100.address)
    assert canonical(after_both.xml) == canonical(original)


def test_release_of_hostdevs_gpupass_did_not_add_removes_only_them():
    original = domain(devices="<controller type='pci' index='0' model='pcie-root'/>"
                              "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                              "<address domain='0x0000' bus='0x42' slot='0x00' function='0x0'/></source></hostdev>")
    assert domxml.read_facts(original).recorded == ()
    back = release(original, H100.address)
    assert back.changes == ["remove <hostdev> 0000:42:00.0"]
    assert domxml.read_facts(back.xml).hostdevs == ()


def test_read_facts_reads_memory_units_locking_machine_and_hostdevs():
    xml = ("<domain type='kvm'><name>m</name><uuid>u-1</uuid><memory unit='GiB'>64</memory>"
           "<memoryBacking><locked/></memoryBacking><os><type machine='pc-q35-8.2'>hvm</type></os><devices>"
           "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0001' bus='0x81' slot='0x1f' function='0x7'/></source></hostdev>"
           "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/></source></hostdev>"
           "</devices></domain>")
    facts = domxml.read_facts(xml)
    assert (facts.name, facts.uuid, facts.machine) == ("m", "u-1", "pc-q35-8.2")
    assert facts.memory_bytes == 64 * GiB and facts.locked_memory
    assert facts.hostdevs == (PciAddress(1, 0x81, 0x1F, 7),)
    assert facts.mmio_window_bytes is None and not facts.hypervisor_hidden


def test_hotplug_hostdev_xml_is_a_managed_pci_hostdev():
    element = ET.fromstring(domxml.hostdev_xml(H100))
    assert element.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    assert element.find("source/address").attrib == {"domain": "0x0000", "bus": "0x42", "slot": "0x00",
                                                      "function": "0x0"}
    assert element.find("address") is None


def test_a_definition_without_devices_is_refused_by_name_not_with_an_attribute_error():
    from gpupass.core.errors import OperationFailed

    with pytest.raises(OperationFailed) as caught:
        domxml.remove_gpus("<domain type='kvm'><name>x</name></domain>", set())
    assert "<devices>" in caught.value.message
