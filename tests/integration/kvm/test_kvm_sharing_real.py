"""Shared GPUs on KVM from real published outputs: a Tesla P40's vGPU (mdev) types and a vGPU created on it,
served by libvirt's test driver, read by the KVM backend, checked by preflight.

The host is a composite of two real reports, placed together by us: the types are those `mdevctl types` printed
for a P40 (mdevctl issue #115), the mediated device and its parent are those `virsh nodedev-dumpxml` printed for a
P40 in kubevirt issue #11135 (where the vGPU's type nvidia-46 is "GRID P40-1Q"). What a correct tool says about such
a host does not depend on which P40 each came from.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gpupass.backends.kvm.nodedev import parse_mdev_nodedev, with_description
from gpupass.core.domain.sharing import ShareMode
from support.cli import gpupass

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "sharing"
P40 = "0000:03:00.0"


def mdevctl_types(text: str) -> list[dict]:
    """`mdevctl types` output: per type its id and 'Key: value' lines."""
    types: list[dict] = []
    for line in text.splitlines():
        if re.fullmatch(r"  \S+", line):
            types.append({"id": line.strip()})
        elif line.startswith("    ") and ":" in line and types:
            key, _, value = line.strip().partition(": ")
            types[-1][key] = value
    return types


def corpus_text(name: str) -> str:
    return "\n".join(line for line in (CORPUS / name).read_text().splitlines() if not line.startswith("#"))


def mdev_device_xml() -> str:
    text = (CORPUS / "nodedev-mdev-grid-p40-1q-kubevirt.xml").read_text()
    return re.sub(r"<!--.*?-->\s*", "", text, flags=re.S).strip()


def host_xml(with_vgpu: bool) -> str:
    types = mdevctl_types(corpus_text("mdevctl-types-tesla-p40.txt"))
    # nvidia-46 is the created vGPU's type; the report names it, not how many more would fit.
    type_elements = "".join(
        f"<type id='{t['id']}'><name>{t['Name']}</name><deviceAPI>{t['Device API']}</deviceAPI>"
        f"<availableInstances>{t['Available instances']}</availableInstances></type>" for t in types)
    type_elements += "<type id='nvidia-46'><name>GRID P40-1Q</name><deviceAPI>vfio-pci</deviceAPI>" \
                     "<availableInstances>23</availableInstances></type>"
    mdev = mdev_device_xml() if with_vgpu else ""
    holder = """<hostdev mode='subsystem' type='mdev' model='vfio-pci'>
        <source><address uuid='334852fe-079b-11ee-9fc7-77463608f467'/></source></hostdev>""" if with_vgpu else ""
    return f"""<node>
  <device><name>computer</name><capability type='system'>
    <hardware><vendor>composite</vendor><uuid>4c4c4544-0047-4d10-8047-b4c04f4d3299</uuid></hardware>
  </capability></device>
  <device>
    <name>pci_0000_03_00_0</name>
    <parent>computer</parent>
    <driver><name>nvidia</name></driver>
    <capability type='pci'>
      <class>0x030200</class>
      <domain>0</domain><bus>3</bus><slot>0</slot><function>0</function>
      <product id='0x1b38'>GP102GL [Tesla P40]</product>
      <vendor id='0x10de'>NVIDIA Corporation</vendor>
      <capability type='mdev_types'>{type_elements}</capability>
      <iommuGroup number='70'><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></iommuGroup>
    </capability>
  </device>
  {mdev}
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>vdi01</name><memory unit='GiB'>8</memory>
    <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
    <devices><controller type='pci' index='0' model='pcie-root'/>{holder}</devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>ml-train</name><memory unit='GiB'>64</memory>
    <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
    <devices><controller type='pci' index='0' model='pcie-root'/></devices>
    <test:runstate>5</test:runstate>
  </domain>
</node>
"""


@pytest.fixture
def p40_host(tmp_path):
    def make(with_vgpu: bool = True) -> str:
        path = tmp_path / ("p40-vgpu.xml" if with_vgpu else "p40.xml")
        path.write_text(host_xml(with_vgpu))
        return f"test://{path}"

    return make


def test_every_sharing_corpus_file_has_a_source_and_an_index_row():
    index = (CORPUS / "INDEX.md").read_text()
    files = [p for p in CORPUS.iterdir() if p.name != "INDEX.md"]
    assert len(files) >= 2
    for path in files:
        assert "Source:" in path.read_text().splitlines()[0], path.name
        assert f"`{path.name}`" in index, path.name


def test_the_vgpu_types_and_the_vgpu_a_vm_holds_are_listed(p40_host):
    document = json.loads(gpupass("gpus", p40_host(), "--json").stdout)
    (gpu,) = document["gpus"]
    sharing = gpu["sharing"]
    assert gpu["address"] == P40 and sharing["modes"] == ["mdev"]
    available = {t["id"]: t["available"] for t in sharing["types"]}
    # As mdevctl printed them: available instances per type.
    assert available["nvidia-156"] == 12 and available["nvidia-241"] == 24 and available["nvidia-285"] == 3
    assert {t["name"] for t in sharing["types"]} >= {"GRID P40-2B", "GRID P40-8C", "GRID P40-1Q"}
    assert sharing["shares"] == [{"id": "334852fe-079b-11ee-9fc7-77463608f467", "type": "nvidia-46", "mode": "mdev",
                                  "holder": "vdi01"}]
    assert gpu["assigned_to"] is None  # a vGPU holder does not own the whole card


def test_a_gpu_holding_a_vgpu_is_not_given_whole(p40_host):
    result = gpupass("check", p40_host(), "ml-train", P40, "--json", expect=3)
    findings = {f["code"]: f for f in json.loads(result.stdout)["findings"]}
    shared = findings["gpu-shared"]
    assert shared["severity"] == "blocker" and "'vdi01'" in shared["message"] and "GRID P40-1Q" in shared["message"]
    fleet = json.loads(gpupass("fleet", "find", "--model", "P40", "--hosts", p40_host(), "--json", expect=3).stdout)
    assert fleet["candidates"] == []


def test_a_gpu_offering_vgpu_types_but_holding_none_can_be_given_whole(p40_host):
    result = gpupass("check", p40_host(with_vgpu=False), "ml-train", P40, "--json", expect=None)
    findings = {f["code"]: f for f in json.loads(result.stdout)["findings"]}
    assert "gpu-shared" not in findings
    assert findings["gpu-sharing-withdrawn"]["severity"] == "info"


def test_the_mdev_node_device_parses_as_libvirt_printed_it():
    mdev = parse_mdev_nodedev(mdev_device_xml())
    assert (mdev.parent, mdev.type_id, mdev.uuid) == (
        "pci_0000_03_00_0", "nvidia-46", "334852fe-079b-11ee-9fc7-77463608f467")


def test_nvidia_type_descriptions_give_framebuffer_and_instances():
    from gpupass.core.domain.sharing import ShareType

    for entry in mdevctl_types(corpus_text("mdevctl-types-tesla-p40.txt")):
        described = with_description(ShareType(entry["id"], entry["Name"], ShareMode.MDEV), entry["Description"])
        framebuffer = int(re.search(r"framebuffer=(\d+)M", entry["Description"]).group(1)) << 20
        assert described.framebuffer_bytes == framebuffer
        assert described.max_instances == int(re.search(r"max_instance=(\d+)", entry["Description"]).group(1))


def test_snapshots_keep_the_sharing_facts(p40_host, tmp_path):
    snapshot = tmp_path / "p40.json"
    gpupass("snapshot", p40_host(), "-o", str(snapshot))
    live = json.loads(gpupass("gpus", p40_host(), "--json").stdout)["gpus"][0]["sharing"]
    offline = json.loads(gpupass("gpus", str(snapshot), "--json").stdout)["gpus"][0]["sharing"]
    assert offline == live and offline["shares"]


def test_the_gpus_table_shows_who_holds_a_share(p40_host):
    out = gpupass("gpus", p40_host(), env={**os.environ, "COLUMNS": "200"}).stdout  # a wide terminal: no cut cells
    assert "shared: vdi01" in out and "0000:03:00.0: 7 mdev types (7 with room now), 1 in use" in out
