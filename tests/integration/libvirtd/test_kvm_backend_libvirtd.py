"""The KVM backend against a REAL libvirtd (unprivileged session daemon with the QEMU driver).

This machine has no IOMMU and no GPU, so the daemon reports no GPU node devices. The tests read the
domains (and the host's real PCI functions) from the daemon with `backend.inventory()`, then add one GPU
described with the core's model -- exactly what the backend would build from a GPU's node device -- and
plan from those facts. Every write (defineXML, attachDeviceFlags) and every read after it goes to the real
daemon, so what is asserted about the domain XML is what libvirt itself stored.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.grouping import group_gpus  # noqa: E402
from gpupass.core.domain.inventory import Firmware, HostFacts, PowerState  # noqa: E402
from gpupass.core.domain.mmio import GiB, MiB  # noqa: E402
from gpupass.core.domain.pci import IommuGroup, PciAddress, PciFunction  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest  # noqa: E402
from gpupass.core.errors import NotSupported, OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
T4 = PciFunction(PciAddress.parse("0000:41:00.0"), 0x10DE, 0x1EB8, 0x030200, name="TU104GL [Tesla T4]")
A100 = PciFunction(PciAddress.parse("0000:42:00.0"), 0x10DE, 0x20F1, 0x030200, name="GA100 [A100 PCIe 40GB]")
EFI_OS = ("<os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type><firmware>"
          "<feature enabled='no' name='secure-boot'/><feature enabled='no' name='enrolled-keys'/></firmware></os>")
BIOS_OS = "<os><type arch='x86_64' machine='q35'>hvm</type></os>"


def q35(name: str, os_xml: str = BIOS_OS) -> str:
    """A tiny TCG q35 domain: no disk, 64 MiB (it idles in the firmware when started)."""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>{os_xml}"
            "<features><acpi/></features><devices><controller type='pci' index='0' model='pcie-root'/></devices>"
            "</domain>")


@pytest.fixture
def backend(libvirtd_uri):
    opened = KvmBackend(Target(uri=libvirtd_uri, name="session"))
    yield opened
    opened.close()


def test_closing_the_backend_ends_the_thread_its_calls_ran_on(libvirtd_uri):
    """Every call to a libvirtd runs on the backend's watchdog thread (a host may never answer); a fleet opens one
    backend per host, so a thread left after close() was one per host for the rest of the process."""
    import threading

    before = set(threading.enumerate())
    opened = KvmBackend(Target(uri=libvirtd_uri, name="session"))
    opened.inventory()
    (worker,) = [t for t in threading.enumerate() if t not in before and t.name == "gpupass-libvirt-call"]
    opened.close()
    worker.join(5)
    assert not worker.is_alive()


def with_gpus(facts: HostFacts, *functions: PciFunction) -> HostFacts:
    """The daemon's facts plus GPUs on an IOMMU-enabled host (each GPU alone in its group)."""
    owners = {address: vm.name for vm in facts.vms for address in vm.assigned}
    groups = {f.address: IommuGroup(60 + i, (f.address,)) for i, f in enumerate(functions)}
    gpus = tuple(group_gpus(functions, groups, owners))
    table = {**facts.functions, **{("", f.address): f for f in functions}}
    host = dataclasses.replace(facts.host, iommu_enabled=True, iommu_reasons=())
    return dataclasses.replace(facts, host=host, gpus=gpus, functions=table)


def inactive_xml(conn, name: str) -> str:
    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def define(conn, xml: str) -> str:
    """Define a domain as an admin's VM looks after its first edit, and return its definition.

    On the FIRST redefinition of a new q35 domain, libvirt 9.0 moves the implicit usb/sata controllers
    after the pcie-root-ports (it sorts controllers when parsing); the content is the same. Any redefine
    does that -- `virsh edit` with no change included -- so the domain is redefined once with its own XML
    first, and the round trip is then compared byte for byte.
    """
    name = ET.fromstring(xml).findtext("name")
    first = conn.defineXML(xml).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    conn.defineXML(first)
    settled = inactive_xml(conn, name)
    conn.defineXML(settled)
    assert inactive_xml(conn, name) == settled, "libvirt's formatting did not settle after one redefine"
    return settled


def test_inventory_reads_the_daemon(backend, libvirt_conn):
    libvirt_conn.defineXML(q35("gp-inventory"))
    facts = backend.inventory()
    vm = facts.find_vm("gp-inventory")
    assert vm is not None and vm.power_state is PowerState.OFF and vm.firmware is Firmware.BIOS
    assert vm.memory_bytes == 64 * MiB and vm.assigned == ()
    assert str(vm.settings["machine"]).startswith("pc-q35-")
    # The daemon's PCI node devices are this machine's: whatever display functions it has are GPUs.
    displays = {address for (_, address), function in facts.functions.items() if function.is_gpu}
    assert {f.address for gpu in facts.gpus for f in gpu.functions if f.is_gpu} == displays
    assert backend.round_trips >= 4


def test_assign_then_release_restores_the_definition(backend, libvirt_conn):
    registry = default_registry()
    before = define(libvirt_conn, q35("gp-assign"))

    plan = make_plan(backend, with_gpus(backend.inventory(), T4), AssignmentRequest("gp-assign", (T4.address,)),
                     registry)
    assert not plan.blocked and [s.action for s in plan.steps if s.writes] == ["kvm.define-domain"]
    outcome = execute(backend, plan)
    assert outcome.facts_after.find_vm("gp-assign").assigned == (T4.address,)

    stored = ET.fromstring(inactive_xml(libvirt_conn, "gp-assign"))
    hostdev = stored.find("devices/hostdev[@type='pci']")
    assert hostdev.get("managed") == "yes"
    source = {k: int(v, 16) for k, v in hostdev.find("source/address").attrib.items()}
    assert source == {"domain": 0, "bus": 0x41, "slot": 0, "function": 0}
    assert stored.find("metadata/{https://gpupass.dev/xmlns/libvirt-assignment/1}assignment") is not None

    release = make_plan(backend, with_gpus(backend.inventory(), T4), ReleaseRequest("gp-assign"), registry)
    assert release.gpus[0].assigned_to == "gp-assign"
    execute(backend, release)
    assert inactive_xml(libvirt_conn, "gp-assign") == before


def test_large_bar_gpu_window_and_efi_round_trip_on_the_daemon(backend, libvirt_conn):
    """pcihole64 + the -fw_cfg qemu:commandline (taints the domain) on an EFI q35 domain, then back."""
    registry = default_registry()
    before = define(libvirt_conn, q35("gp-mmio", EFI_OS))
    plan = make_plan(backend, with_gpus(backend.inventory(), A100), AssignmentRequest("gp-mmio", (A100.address,)),
                     registry)
    assert plan.mmio.target_window == 128 * GiB and not plan.blocked
    execute(backend, plan)
    stored = ET.fromstring(inactive_xml(libvirt_conn, "gp-mmio"))
    assert int(stored.find("devices/controller[@model='pcie-root']/pcihole64").text) == 128 * GiB // 1024
    args = [a.get("value") for a in stored.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args == ["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=131072"]
    assert backend.inventory().find_vm("gp-mmio").mmio_window_bytes == 128 * GiB

    execute(backend, make_plan(backend, with_gpus(backend.inventory(), A100), ReleaseRequest("gp-mmio"), registry))
    assert inactive_xml(libvirt_conn, "gp-mmio") == before


def test_firmware_switch_to_efi_round_trip_on_the_daemon(backend, libvirt_conn):
    registry = default_registry()
    before = define(libvirt_conn, q35("gp-fw").replace("<features><acpi/></features>", ""))
    request = AssignmentRequest("gp-fw", (A100.address,), AssignOptions(allow_firmware_change=True))
    plan = make_plan(backend, with_gpus(backend.inventory(), A100), request, registry)
    assert "firmware-change" in {f.code for f in plan.findings} and not plan.blocked
    execute(backend, plan)
    stored = ET.fromstring(inactive_xml(libvirt_conn, "gp-fw"))
    assert stored.find("os").get("firmware") == "efi" and stored.find("features/acpi") is not None
    execute(backend, make_plan(backend, with_gpus(backend.inventory(), A100), ReleaseRequest("gp-fw"), registry))
    assert inactive_xml(libvirt_conn, "gp-fw") == before


def test_live_attach_error_of_this_machine_surfaces_as_a_gpupass_error(backend, libvirt_conn):
    registry = default_registry()
    define(libvirt_conn, q35("gp-live"))
    domain = libvirt_conn.lookupByName("gp-live")
    domain.create()
    before_config, before_live = inactive_xml(libvirt_conn, "gp-live"), domain.XMLDesc(0)
    facts = with_gpus(backend.inventory(), T4)
    assert facts.find_vm("gp-live").power_state is PowerState.RUNNING
    assert "vm-not-off" in {f.code for f in make_plan(
        backend, facts, AssignmentRequest("gp-live", (T4.address,)), registry).findings}

    plan = make_plan(backend, facts, AssignmentRequest("gp-live", (T4.address,), AssignOptions(live=True)), registry)
    assert [s.action for s in plan.steps if s.writes] == ["kvm.hotplug", "kvm.define-domain"]
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back
    cause = caught.value.__cause__
    assert isinstance(cause, NotSupported), cause
    # "host doesn't support passthrough of host PCI devices"
    assert cause.__cause__.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    assert inactive_xml(libvirt_conn, "gp-live") == before_config
    assert domain.XMLDesc(0) == before_live and domain.isActive()


def test_release_of_a_never_edited_domain_differs_only_by_libvirts_own_reordering(backend, libvirt_conn):
    registry = default_registry()
    raw = libvirt_conn.defineXML(q35("gp-raw")).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    execute(backend, make_plan(backend, with_gpus(backend.inventory(), T4), AssignmentRequest("gp-raw", (T4.address,)),
                               registry))
    execute(backend, make_plan(backend, with_gpus(backend.inventory(), T4), ReleaseRequest("gp-raw"), registry))
    after = inactive_xml(libvirt_conn, "gp-raw")
    # What a no-op redefine of the original gives: the same elements, controllers sorted by libvirt.
    libvirt_conn.defineXML(raw)
    assert inactive_xml(libvirt_conn, "gp-raw") == after
    assert sorted(line.strip() for line in raw.splitlines()) == sorted(line.strip() for line in after.splitlines())


def test_several_gpus_release_leaves_no_root_port_behind(backend, libvirt_conn):
    """libvirt adds a pcie-root-port at define for each hostdev it has no free port for; gpupass gives every
    card its own recorded port instead, so the release removes them all."""
    registry = default_registry()
    third = dataclasses.replace(T4, address=PciAddress.parse("0000:43:00.0"))
    cards = (T4, A100, third)
    before = define(libvirt_conn, q35("gp-multi", EFI_OS))
    ports_before = inactive_xml(libvirt_conn, "gp-multi").count("model='pcie-root-port'")
    request = AssignmentRequest("gp-multi", tuple(f.address for f in cards))
    execute(backend, make_plan(backend, with_gpus(backend.inventory(), *cards), request, registry))
    assigned = inactive_xml(libvirt_conn, "gp-multi")
    assert assigned.count("model='pcie-root-port'") == ports_before + 3
    buses = {h.find("address").get("bus") for h in ET.fromstring(assigned).findall("devices/hostdev")}
    assert len(buses) == 3  # one root port per card
    execute(backend, make_plan(backend, with_gpus(backend.inventory(), *cards), ReleaseRequest("gp-multi"), registry))
    assert inactive_xml(libvirt_conn, "gp-multi") == before


RTX4090 = PciFunction(PciAddress.parse("0000:01:00.0"), 0x10DE, 0x2684, 0x030000, name="AD102 [GeForce RTX 4090]")
RTX4090_AUDIO = PciFunction(PciAddress.parse("0000:01:00.1"), 0x10DE, 0x22BA, 0x040300, name="AD102 HD Audio")


def with_card(facts: HostFacts, *functions: PciFunction) -> HostFacts:
    """One multifunction card whose functions share an IOMMU group."""
    group = IommuGroup(70, tuple(sorted(f.address for f in functions)))
    owners = {address: vm.name for vm in facts.vms for address in vm.assigned}
    gpus = tuple(group_gpus(functions, {f.address: group for f in functions}, owners))
    table = {**facts.functions, **{("", f.address): f for f in functions}}
    return dataclasses.replace(facts, host=dataclasses.replace(facts.host, iommu_enabled=True, iommu_reasons=()),
                               gpus=gpus, functions=table)


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_companions_and_hiding_round_trip_on_the_daemon(backend, libvirt_conn, machine):
    registry = default_registry()
    name = f"gp-card-{machine}"
    xml = q35(name).replace("machine='q35'", f"machine='{machine}'")
    if machine == "pc":
        xml = xml.replace("model='pcie-root'", "model='pci-root'")
    before = define(libvirt_conn, xml)
    card = (RTX4090, RTX4090_AUDIO)
    request = AssignmentRequest(name, (RTX4090.address,),
                                AssignOptions(hide_hypervisor=True, bar_sizes={RTX4090.address: 256 * MiB}))
    plan = make_plan(backend, with_card(backend.inventory(), *card), request, registry)
    assert not plan.blocked, plan.findings
    execute(backend, plan)
    stored = ET.fromstring(inactive_xml(libvirt_conn, name))
    guests = [h.find("address") for h in stored.findall("devices/hostdev")]
    assert len(guests) == 2 and len({(g.get("bus"), g.get("slot")) for g in guests}) == 1
    assert [g.get("function") for g in guests] == ["0x0", "0x1"] and guests[0].get("multifunction") == "on"
    assert stored.find("features/kvm/hidden").get("state") == "on"
    assert stored.find("features/hyperv/vendor_id").get("value") == "gpupass0000"
    execute(backend, make_plan(backend, with_card(backend.inventory(), *card), ReleaseRequest(name), registry))
    assert inactive_xml(libvirt_conn, name) == before
