"""Real Hyper-V outputs (tests/fixtures/real/hyperv/, published by Microsoft and others) turned into hosts the lab
serves or into parsed results, with what a correct tool concludes from each.

The host model is checked against them too: where an output shows what a cmdlet prints, the model must print the
same (status, class, names, messages).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend, passthrough_state
from gpupass.backends.hyperv.lab.hostmodel import HostModel, PnpDevice, VirtualMachine, run_script
from gpupass.backends.hyperv.lab.hostmodel import devpkeys
from gpupass.core import plugins
from gpupass.core.domain.mmio import MiB, mmio_need
from gpupass.core.domain.pci import Bar
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "hyperv"
T4_BARS = [16 * MiB, 256 * MiB, 32 * MiB]   # catalog (T4 product brief, as quoted in core/domain/catalog.py)


def fixture(name: str) -> tuple[dict[str, str], list[str]]:
    """(header fields, body lines) of a corpus file: 'Key: value' lines up to '----', then the verbatim text."""
    head, _, body = (CORPUS / name).read_text(encoding="utf-8").partition("\n----\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    return fields, body.splitlines()


def pnp_rows(lines: list[str]) -> list[tuple[str, str, str]]:
    """Rows of `Get-PnpDevice | select status, class, friendlyname, instanceid` as printed (table, no header):
    (status, friendly name, instance id); the Class column is empty in these outputs."""
    rows = []
    for line in lines[1:]:
        m = re.match(r"^(\S+)\s{2,}(.+?)\s{2,}(PCI\\\S+)$", line)
        assert m, line
        rows.append((m.group(1), m.group(2), m.group(3)))
    return rows


def serve(model: HostModel, endpoint_factory, tmp_path) -> HypervBackend:
    ep = endpoint_factory(model, "basic")
    return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="real",
                                password=Secret(PASSWORD), options={"state_file": str(tmp_path / "s.json")}))


def host(*devices: PnpDevice, name: str = "REAL", **kw) -> HostModel:
    return HostModel(name=name, devices=list(devices), vms=[VirtualMachine("vm1", memory_startup=16 * 2**30)], **kw)


def t4(iid: str, n: int, pnp_class: str = "", **kw) -> PnpDevice:
    # 10de:1eb8 is a Tesla T4, a 3D controller (class 030200: "3D Video Controller" is Windows' name for it)
    return PnpDevice(iid, "3D Video Controller", pnp_class, f"PCIROOT(0)#PCI(0{n}00)#PCI(0000)", 0x10DE, 0x1EB8,
                     list(T4_BARS), class_code=0x030200, **kw)


# ------------------------------------------------------------------------------------------------------- the index
def test_every_corpus_file_has_a_source_and_is_indexed():
    files = sorted(p.name for p in CORPUS.iterdir() if p.name != "INDEX.md")
    assert len(files) >= 6
    index = (CORPUS / "INDEX.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([^`]+)` \|", index, re.M)
    assert sorted(listed) == files
    for name in files:
        fields, body = fixture(name)
        assert fields.get("Source") and fields.get("Shows") and "Trimmed" in fields, name
        assert body, name


# ------------------------------------------------------------------------------- GPUs without a host driver (AKS)
def test_driverless_t4s_as_published_are_gpus(endpoint_factory, tmp_path):
    _, lines = fixture("aks-t4-no-host-driver.txt")
    rows = pnp_rows(lines)
    model = host(*(t4(iid, n + 1) for n, (_, _, iid) in enumerate(rows)))
    # the model prints what Windows printed for them
    r = run_script(model, "Get-PnpDevice -InstanceId 'PCI\\*' | ConvertTo-Json -Compress")
    shown = [(d["Status"], d["Class"], d["FriendlyName"], d["InstanceId"]) for d in json.loads(r.stdout)]
    assert shown == [(s, None, n, i) for s, n, i in rows]
    # a correct tool lists both as GPUs and can assign one
    backend = serve(model, endpoint_factory, tmp_path)
    facts = backend.inventory()
    assert [g.function.class_code for g in facts.gpus] == [0x030200, 0x030200]
    assert all(g.passthrough.capable and g.assigned_to is None for g in facts.gpus)
    registry = plugins.default_registry()
    plan = make_plan(backend, facts, AssignmentRequest("vm1", (facts.gpus[0].address,)), registry)
    assert not plan.blocked, plan.findings
    execute(backend, plan)
    assert model.device_by_location(facts.gpus[0].extra["location_path"]).assigned_vm == "vm1"


def test_dismounted_t4s_as_published_are_free_for_assignment(endpoint_factory, tmp_path):
    _, lines = fixture("aks-t4-dismounted.txt")
    rows = pnp_rows(lines)
    model = host(*(t4(iid, n + 1, enabled=False, dismounted=True) for n, (_, _, iid) in enumerate(rows)))
    r = run_script(model, "Get-PnpDevice -InstanceId 'PCI\\*' | ConvertTo-Json -Compress")
    assert [(d["Status"], d["Class"], d["FriendlyName"], d["InstanceId"]) for d in json.loads(r.stdout)] == \
        [(s, None, n, i) for s, n, i in rows]
    facts = serve(model, endpoint_factory, tmp_path).inventory()
    assert len(facts.gpus) == 2
    for gpu in facts.gpus:
        # dismounted = given up by the host, held by no VM: ready for Add-VMAssignableDevice
        assert gpu.passthrough.enabled and gpu.passthrough.active and gpu.assigned_to is None
        assert gpu.extra["status"] == "Unknown" and gpu.extra["present"] is False


# ------------------------------------------------------------------------------ Get-VMHostAssignableDevice (2015)
def test_assignable_device_pool_as_published():
    _, lines = fixture("oshins-2015-get-vmhostassignabledevice.txt")
    path = lines[1]
    props = dict(line.split(" : ", 1) for line in lines if " : " in line)
    assert props["LocationPath"] == path     # the script's LocationPaths Data[0] is what the pool lists
    original = "PCI\\" + props["InstanceID"].split("\\", 1)[1]
    nvme = PnpDevice(original, "Standard NVM Express Controller", "SCSIAdapter", path, 0x144D, 0xA820,
                     [16 * 1024], class_code=0x010802, enabled=False, dismounted=True)
    model = host(nvme, name=props["ComputerName"])
    got = json.loads(run_script(model, "Get-VMHostAssignableDevice | ConvertTo-Json -Compress").stdout)
    assert (got["InstanceID"], got["LocationPath"], got["ComputerName"]) == \
        (props["InstanceID"], props["LocationPath"], props["ComputerName"])
    assert str(got["IsDeleted"]) == props["IsDeleted"]
    # the device is addressable and is not a GPU
    assert path in address_map([path])
    inv = json.loads(run_script(model, S.inventory_script()).stdout)
    assert inv["Functions"] == []


# ---------------------------------------------------------------------------------------- survey-dda.ps1 (2015)
SURVEY_VERDICTS = {
    "BIOS requires that this device remain attached to BIOS-owned memory. Not assignable.": "rmrr",
    "Traffic from this device may be redirected to other devices in the system. Not assignable.": "acs",
    "Old-style PCI device, switch port, etc. Not assignable.": "device type",
    "Express Endpoint -- more secure.": "assignable",
}


def survey_entries(lines: list[str]) -> dict[str, tuple[str, str | None]]:
    entries, name = {}, None
    for line in lines:
        if not line or line.startswith("[..."):
            name = None
        elif name is None:
            name = line
        elif line in SURVEY_VERDICTS:
            entries[name] = (SURVEY_VERDICTS[line], None)
        elif line.startswith("PCIROOT("):
            entries[name] = (entries[name][0], line)
    return entries


def test_survey_verdicts_match_the_properties_the_inventory_reads():
    _, lines = fixture("oshins-2015-survey-dda-hp-server.txt")
    entries = survey_entries(lines)
    assert set(v for v, _ in entries.values()) == {"rmrr", "acs", "device type", "assignable"}
    k520_path = entries["NVIDIA GRID K520"][1]
    devices = {
        "Smart Array P420i Controller": dict(rmrr=True, class_code=0x010400),
        "Intel(R) C600/X79 series chipset USB2 Enhanced Host Controller #2 - 1D2D":
            dict(device_type="PciConventional", class_code=0x0C0320),
        "NVIDIA GRID K520": dict(class_code=0x030000),
        "Intel(R) Gigabit ET Dual Port Server Adapter": dict(acs=False, class_code=0x020000),
        "Intel(R) Gigabit ET Dual Port Server Adapter #2": dict(acs=False, class_code=0x020000),
    }
    model = host(*(PnpDevice(f"PCI\\VEN_8086&DEV_{n:04X}&SUBSYS_00000000&REV_01\\3&0&0&{n:02X}", name, "System",
                             k520_path if name == "NVIDIA GRID K520" else f"PCIROOT(0)#PCI({n:02X}00)", 0x8086, n,
                             [MiB], **kw) for n, (name, kw) in enumerate(devices.items(), start=1)))
    for device in model.devices:
        # what the inventory asks, by GUID and id, read through the model as Windows answers it
        values = {}
        for field, pid in S.PROPERTY_IDS.items():
            r = run_script(model, f"(Get-PnpDeviceProperty -InstanceId '{device.instance_id}' -KeyName "
                                  f"'{S.PCI_DEVICE_FMTID} {pid}').Data | ConvertTo-Json")
            values[field] = json.loads(r.stdout)
        state = passthrough_state(values)
        verdict = entries[device.friendly_name][0]
        assert state.capable is (verdict == "assignable"), device.friendly_name
        if verdict != "assignable":
            word = {"rmrr": "RMRR", "acs": "ACS", "device type": "not a PCI Express endpoint"}[verdict]
            assert word in state.reasons[0], (device.friendly_name, state.reasons)


def test_k520_location_path_becomes_an_address_and_a_gpu(endpoint_factory, tmp_path):
    _, lines = fixture("oshins-2015-survey-dda-hp-server.txt")
    path = survey_entries(lines)["NVIDIA GRID K520"][1]
    assert path == "PCIROOT(0)#PCI(0300)#PCI(0000)#PCI(0800)#PCI(0000)"
    k520 = PnpDevice("PCI\\VEN_10DE&DEV_118A&SUBSYS_100310DE&REV_A1\\4&1&0&0008", "NVIDIA GRID K520", "Display",
                     path, 0x10DE, 0x118A, [176 * MiB], class_code=0x030000)
    gpu = serve(host(k520), endpoint_factory, tmp_path).inventory().gpus[0]
    assert gpu.extra["location_path"] == path and gpu.passthrough.capable
    assert (gpu.address.domain, gpu.address.slot, gpu.address.function) == (0, 0, 0)   # last hop PCI(0000)


# --------------------------------------------------------------------------------- MMIO for the K520 (WS docs)
def test_k520_high_mmio_is_microsofts_sum_plus_default():
    _, lines = fixture("ws-docs-surveydda-k520-mmio.txt")
    mb = int(re.search(r"requires at least: (\d+) MB", "\n".join(lines)).group(1))
    policy = HypervBackend.mmio_policy
    # one K520: 176 MB + 512 MB, as the page sets it
    assert policy.window_for(mmio_need([Bar(0, mb * MiB)])) == (mb + 512) * MiB
    # three: never less than the page's 528 MB + 512 MB (gpupass aligns each BAR, so it may ask for more)
    assert policy.window_for(mmio_need([Bar(i, mb * MiB) for i in range(3)])) >= (3 * mb + 512) * MiB


# --------------------------------------------------------------------------- Dismount without -Force (2015)
def test_dismount_without_force_prints_the_published_error():
    _, lines = fixture("oshins-2015-dismount-without-force.txt")
    path = re.search(r'-LocationPath "([^"]+)"', lines[0]).group(1)
    published = " ".join(" ".join(lines[2:]).split()).replace("Dismount-VMHostAssignableDevice : ", "", 1)
    usb3 = PnpDevice("PCI\\VEN_8086&DEV_8C31&SUBSYS_00000000&REV_05\\3&11583659&0&A0", "USB xHCI", "USB", path,
                     0x8086, 0x8C31, [64 * 1024], class_code=0x0C0330)
    model = host(usb3)
    r = run_script(model, f"Disable-PnpDevice -InstanceId '{usb3.instance_id}' -Confirm:$false\n"
                          f"Dismount-VMHostAssignableDevice -LocationPath '{path}'")
    assert r.exit_code == 1
    assert " ".join(r.errors[0].message.split()) == published
    assert not usb3.dismounted
    # and the backend passes -Force, as Microsoft's guides do for GPUs without a mitigation driver
    assert "-Force" in S.assign_script("vm1", [path], 1, 1)


# ------------------------------------------------------------------------ IovSupportReasons (qemu-devel, 2019)
def test_iov_support_reasons_block_every_assignment(endpoint_factory, tmp_path):
    _, lines = fixture("qemu-devel-2019-iovsupportreasons.txt")
    reason = " ".join(lines[1:])     # one message, wrapped by the mail client
    assert reason.startswith("The chipset on the system does not do DMA remapping")
    model = host(t4("PCI\\VEN_10DE&DEV_1EB8&SUBSYS_12A210DE&REV_A1\\4&1&0&0000", 1, pnp_class="Display"),
                 iov_support=False, iov_support_reasons=[reason])
    backend = serve(model, endpoint_factory, tmp_path)
    facts = backend.inventory()
    assert facts.host.iommu_enabled is False and facts.host.iommu_reasons == (reason,)
    plan = make_plan(backend, facts, AssignmentRequest("vm1", (facts.gpus[0].address,)), plugins.default_registry())
    iommu = [f for f in plan.findings if f.code == "iommu-off"]
    assert iommu and iommu[0].severity.value == "blocker"


# ------------------------------------------------------------------ property keys by GUID (PnpDevice docs)
def test_guid_keys_resolve_to_the_names_windows_prints():
    _, lines = fixture("pnpdevice-docs-property-by-guid.txt")
    asked = re.findall(r"'(\{[0-9A-F-]+\} \d+)'", lines[0])
    printed = [line.split()[1] for line in lines[3:]]
    assert [devpkeys.lookup(k).name for k in asked] == printed


@pytest.mark.parametrize("name", ["aks-t4-no-host-driver.txt", "aks-t4-dismounted.txt"])
def test_the_old_display_class_filter_sees_none_of_these_gpus(name):
    # Class -eq 'Display' (the inventory before issue 8) finds nothing on these real hosts
    rows = pnp_rows(fixture(name)[1])
    model = host(*(t4(iid, n + 1) for n, (_, _, iid) in enumerate(rows)))
    r = run_script(model, "Get-PnpDevice -Class Display -ErrorAction SilentlyContinue | ConvertTo-Json")
    assert r.stdout.strip() == ""
