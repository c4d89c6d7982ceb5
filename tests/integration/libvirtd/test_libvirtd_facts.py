"""What a real (unprivileged, session) libvirtd on a CI host can and cannot do for PCI passthrough.

These tests document facts the KVM backend relies on.  They assert libvirt error
CODES (``libvirtError.get_error_code()``), never message text; the message is only
put into the assertion text for the record.

Host assumptions (Debian 12, libvirt 9.0, QEMU 7.2): no IOMMU, no GPU, no /dev/kvm
for the daemon, so only ``type='qemu'`` (TCG) domains run.  PCI address
0000:41:00.0 does not exist on the host; libvirt does not check that at define time.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")

GPU = "0000:41:00.0"
HOSTDEV = (
    "<hostdev mode='subsystem' type='pci' managed='yes'>"
    "<source><address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/></source>"
    "</hostdev>"
)
EFI_OS = (
    "<os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type>"
    "<firmware>"
    "<feature enabled='no' name='secure-boot'/>"
    "<feature enabled='no' name='enrolled-keys'/>"
    "</firmware></os>"
)
BIOS_OS = "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
GP_NS = "https://example.org/gpupass/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
MMIO64_FWCFG = "opt/ovmf/X-PciMmio64Mb"


def domain_xml(
    name: str,
    *,
    os_xml: str = BIOS_OS,
    devices: str = "",
    extra: str = "",
    tail: str = "",
    dom_type: str = "qemu",
) -> str:
    """A tiny q35 domain: 64 MiB, 1 vCPU, no disk (TCG boots nothing and idles)."""
    return (
        f"<domain type='{dom_type}' xmlns:gp='{GP_NS}' xmlns:qemu='{QEMU_NS}'>"
        f"<name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        f"{extra}{os_xml}<features><acpi/></features>"
        f"<devices>{devices}</devices>{tail}</domain>"
    )


def pci_hostdevs(xml: str) -> list[str]:
    """Source addresses ('dddd:bb:ss.f') of the PCI hostdevs in a domain XML."""
    out = []
    for hd in ET.fromstring(xml).iterfind("./devices/hostdev[@type='pci']"):
        a = hd.find("./source/address")
        out.append(
            "%04x:%02x:%02x.%x"
            % tuple(int(a.get(k), 16) for k in ("domain", "bus", "slot", "function"))
        )
    return out


@contextmanager
def expect_libvirt_error(code: int, what: str):
    """Assert that the block raises libvirtError with ``code`` (a VIR_ERR_* constant)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        got = exc.get_error_code()
        assert got == code, (
            f"{what}: expected error code {code}, got code {got} "
            f"(domain {exc.get_error_domain()}): {exc.get_error_message()!r}"
        )
    else:
        pytest.fail(f"{what}: expected libvirtError with code {code}, but it succeeded")


def nvram_path(dom) -> str | None:
    el = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("./os/nvram")
    return el.text if el is not None else None


# --------------------------------------------------------------------------- harness


def test_daemon_runs_unprivileged_and_answers(libvirtd_daemon, libvirtd_uri):
    assert libvirtd_uri.startswith("qemu+unix:///session?socket=/")
    t0 = time.monotonic()
    conn = libvirt.open(libvirtd_uri)
    try:
        assert conn.getType() == "QEMU"
        assert conn.getLibVersion() > 0
        assert conn.isAlive()
        first_call = time.monotonic() - t0
    finally:
        conn.close()
    status = Path(f"/proc/{libvirtd_daemon.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    real_uid = int(uid_line.split()[1])
    if os.geteuid() == 0:
        assert real_uid != 0, "libvirtd must not run as root (it would be the system daemon)"
    print(
        f"libvirtd socket {libvirtd_daemon.socket_seconds:.3f}s, "
        f"ready {libvirtd_daemon.start_seconds:.3f}s, open+first call {first_call:.3f}s"
    )


# --------------------------------------------------------------- define / hostdev


def test_domcaps_offer_efi_without_secure_boot(libvirt_conn):
    caps = ET.fromstring(libvirt_conn.getDomainCapabilities(None, "x86_64", "q35", "qemu"))
    firmwares = [v.text for v in caps.iterfind("./os/enum[@name='firmware']/value")]
    assert "efi" in firmwares, "no EFI firmware for q35: apt-get install ovmf"
    loaders = [v.text for v in caps.iterfind("./os/loader/value")]
    assert any("secboot" not in p and ".ms." not in p for p in loaders), loaders


def test_define_efi_q35_with_managed_pci_hostdev_keeps_it(libvirt_conn):
    dom = libvirt_conn.defineXML(domain_xml("efi-hostdev", os_xml=EFI_OS, devices=HOSTDEV))
    root = ET.fromstring(dom.XMLDesc(0))
    assert pci_hostdevs(dom.XMLDesc(0)) == [GPU]
    hd = root.find("./devices/hostdev")
    assert hd.get("managed") == "yes"
    # libvirt gives the hostdev a guest PCI address on a pcie-root-port.
    assert hd.find("./address[@type='pci']") is not None
    os_el = root.find("./os")
    assert os_el.get("firmware") == "efi"
    assert os_el.find("./type").get("machine").startswith("pc-q35-")
    features = {f.get("name"): f.get("enabled") for f in os_el.iterfind("./firmware/feature")}
    assert features == {"secure-boot": "no", "enrolled-keys": "no"}
    assert dom.isActive() == 0


def test_hostdev_attach_and_detach_config_on_shutoff_domain(libvirt_conn):
    dom = libvirt_conn.defineXML(domain_xml("cfg-attach", os_xml=EFI_OS))
    assert pci_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == []
    dom.attachDeviceFlags(HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert pci_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == [GPU]
    # Attaching the same host device twice is refused.
    with expect_libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "second CONFIG attach"):
        dom.attachDeviceFlags(HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    dom.detachDeviceFlags(HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert pci_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == []
    with expect_libvirt_error(libvirt.VIR_ERR_DEVICE_MISSING, "CONFIG detach of absent hostdev"):
        dom.detachDeviceFlags(HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def test_undefine_efi_domain_after_first_start_needs_nvram_flag(libvirtd_daemon, libvirt_conn):
    # Never started: no NVRAM file exists yet, so a plain undefine works.
    fresh = libvirt_conn.defineXML(domain_xml("efi-fresh", os_xml=EFI_OS))
    fresh.undefine()

    dom = libvirt_conn.defineXML(domain_xml("efi-undef", os_xml=EFI_OS))
    dom.create()  # OVMF under TCG; no disk, it just sits in the firmware
    live = ET.fromstring(dom.XMLDesc(0))
    loader = live.find("./os/loader")
    assert loader is not None and loader.get("type") == "pflash", dom.XMLDesc(0)
    assert "secboot" not in loader.text and loader.get("secure") != "yes", loader.text
    dom.destroy()
    nvram = nvram_path(dom) or live.findtext("./os/nvram")
    assert nvram and os.path.exists(nvram), f"NVRAM file missing: {nvram}"
    with expect_libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "plain undefine of started EFI domain"):
        dom.undefine()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    assert not os.path.exists(nvram)
    assert "efi-undef" not in [d.name() for d in libvirt_conn.listAllDomains()]


def test_live_pci_attach_on_running_domain_is_unsupported(libvirt_conn):
    dom = libvirt_conn.defineXML(domain_xml("live-attach"))
    dom.create()
    assert dom.isActive()
    with expect_libvirt_error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "live PCI hostdev attach"):
        dom.attachDeviceFlags(HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    with expect_libvirt_error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "live+config PCI hostdev attach"):
        dom.attachDeviceFlags(
            HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        )
    # Nothing was half-applied to the persistent config.
    assert pci_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == []
    # CONFIG-only still works while the domain runs (takes effect on next boot).
    dom.attachDeviceFlags(HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert pci_hostdevs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == [GPU]
    assert pci_hostdevs(dom.XMLDesc(0)) == []


def test_starting_a_domain_with_pci_hostdev_is_unsupported(libvirt_conn):
    dom = libvirt_conn.defineXML(domain_xml("start-hostdev", devices=HOSTDEV))
    with expect_libvirt_error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "start with PCI hostdev"):
        dom.create()
    assert not dom.isActive()


def test_nodedev_detach_vfio_is_not_supported(libvirt_conn):
    if os.path.isdir("/sys/kernel/iommu_groups") and os.listdir("/sys/kernel/iommu_groups"):
        pytest.skip("host has an IOMMU: VFIO detach would be attempted on a real device")
    with expect_libvirt_error(libvirt.VIR_ERR_NO_NODE_DEVICE, f"lookup of absent {GPU}"):
        libvirt_conn.nodeDeviceLookupByName("pci_0000_41_00_0")
    devs = libvirt_conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
    if not devs:
        pytest.skip("no PCI node devices visible to the daemon")
    # Only detach*: libvirt refuses it before touching the device.  Never call
    # reset()/reAttach() here: they go straight to sysfs (only the unprivileged
    # user stops them).
    with expect_libvirt_error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, f"vfio detach of {devs[0].name()}"):
        devs[0].detachFlags("vfio", 0)


# ------------------------------------------ fw_cfg / pcihole64 / metadata round trips

SYSINFO_OVMF = (
    f"<sysinfo type='fwcfg'><entry name='{MMIO64_FWCFG}'>65536</entry></sysinfo>"
)
PCIHOLE = (
    "<controller type='pci' model='pcie-root'>"
    "<pcihole64 unit='KiB'>67108864</pcihole64></controller>"
)
METADATA = f"<metadata><gp:gpupass><gp:gpu address='{GPU}'/></gp:gpupass></metadata>"
QEMU_FWCFG = (
    "<qemu:commandline><qemu:arg value='-fw_cfg'/>"
    f"<qemu:arg value='name={MMIO64_FWCFG},string=65536'/></qemu:commandline>"
)


def _check_roundtrip(xml: str, *, sysinfo: bool = True) -> None:
    root = ET.fromstring(xml)
    if sysinfo:
        entry = root.find("./sysinfo[@type='fwcfg']/entry")
        assert entry is not None and entry.get("name") == MMIO64_FWCFG and entry.text == "65536"
    hole = root.find("./devices/controller[@model='pcie-root']/pcihole64")
    assert hole is not None and hole.get("unit") == "KiB" and hole.text == "67108864"
    gpu = root.find(f"./metadata/{{{GP_NS}}}gpupass/{{{GP_NS}}}gpu")
    assert gpu is not None and gpu.get("address") == GPU


def test_test_driver_roundtrips_fwcfg_pcihole64_and_metadata(tmp_path):
    node = tmp_path / "node.xml"
    node.write_text(
        "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
        "<active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>"
        "<memory>2097152</memory></node>"
    )
    conn = libvirt.open(f"test://{node}")
    try:
        dom = conn.defineXML(
            domain_xml(
                "rt", dom_type="test", extra=METADATA + SYSINFO_OVMF, devices=PCIHOLE
            )
        )
        _check_roundtrip(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        md = dom.metadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, GP_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        )
        assert ET.fromstring(md).find("./gpu").get("address") == GPU
        # The test driver rejects the NVRAM undefine flag the QEMU driver needs.
        with expect_libvirt_error(libvirt.VIR_ERR_INVALID_ARG, "test driver UNDEFINE_NVRAM"):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    finally:
        conn.close()


def test_real_daemon_keeps_pcihole64_and_metadata(libvirt_conn):
    dom = libvirt_conn.defineXML(
        domain_xml("rt-real", os_xml=EFI_OS, extra=METADATA, devices=PCIHOLE)
    )
    _check_roundtrip(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), sysinfo=False)
    md = dom.metadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, GP_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG
    )
    assert ET.fromstring(md).find("./gpu").get("address") == GPU


def test_real_daemon_passes_pcihole64_to_qemu(libvirtd_daemon, libvirt_conn):
    dom = libvirt_conn.defineXML(domain_xml("hole-start", devices=PCIHOLE))
    dom.create()
    log = libvirtd_daemon.domain_log("hole-start")
    assert "q35-pcihost.pci-hole64-size=67108864K" in log, log[-3000:]


def test_real_daemon_rejects_reserved_ovmf_fwcfg_sysinfo(libvirt_conn):
    """libvirt reserves fw_cfg names under opt/ovmf/ (and opt/org.qemu/) in <sysinfo>."""
    with expect_libvirt_error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED, f"<sysinfo> entry {MMIO64_FWCFG}"):
        libvirt_conn.defineXML(domain_xml("fwcfg-ovmf", os_xml=EFI_OS, extra=SYSINFO_OVMF))
    # A non-reserved opt/ name is accepted and kept.
    other = SYSINFO_OVMF.replace("opt/ovmf/", "opt/org.example/")
    dom = libvirt_conn.defineXML(domain_xml("fwcfg-other", os_xml=EFI_OS, extra=other))
    entry = ET.fromstring(dom.XMLDesc(0)).find("./sysinfo[@type='fwcfg']/entry")
    assert entry.get("name") == "opt/org.example/X-PciMmio64Mb"


def test_real_daemon_accepts_ovmf_fwcfg_via_qemu_commandline(libvirtd_daemon, libvirt_conn):
    """The working way to set X-PciMmio64Mb: a qemu:commandline -fw_cfg passthrough."""
    dom = libvirt_conn.defineXML(domain_xml("fwcfg-cmdline", os_xml=EFI_OS, tail=QEMU_FWCFG))
    args = [
        a.get("value")
        for a in ET.fromstring(dom.XMLDesc(0)).iterfind(f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    ]
    assert args == ["-fw_cfg", f"name={MMIO64_FWCFG},string=65536"]
    dom.create()
    log = libvirtd_daemon.domain_log("fwcfg-cmdline")
    assert f"-fw_cfg name={MMIO64_FWCFG},string=65536" in log, log[-3000:]
