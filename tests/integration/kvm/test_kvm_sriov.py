"""SR-IOV virtual functions on KVM through libvirt's test driver: inventory, check, plan, assign, release.

A PF's node device carries <capability type='virt_functions' maxCount='N'> with one <address> per enabled VF, and
each VF <capability type='phys_function'> (libvirt docs/formatnode.rst); the test driver reads and reports both
from its host file, as a real libvirtd reports them from sysfs. Two hosts here are built from real published
outputs (tests/fixtures/real/sharing): an Intel Alder Lake-N with VFs (`lspci -nnk`, i915-sriov-dkms issue #342) and
an NVIDIA A10 (`virsh nodedev-dumpxml` and its virtfn links, OpenNebula's vGPU guide); lab-kvm carries an SR-IOV PF
whose VFs are given to VMs end to end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.lab import testhost
from gpupass.backends.kvm.nodedev import parse_pci_nodedev
from gpupass.backends.kvm.steps import DefineDomain
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.domain.sharing import SRIOV_VF_TYPE, ShareMode
from gpupass.core.errors import NotFound, UsageError
from gpupass.core.service import execute, make_plan
from support.cli import gpupass

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "sharing"
PF = "0000:00:02.0"
VFS = ("0000:00:02.1", "0000:00:02.2", "0000:00:02.3", "0000:00:02.4")


def share_request(vm: str, gpu: str, share: str = SRIOV_VF_TYPE) -> AssignmentRequest:
    return AssignmentRequest(vm, (gpu,), AssignOptions(share=share))


def holders(backend, pf: str = PF) -> dict[str, str | None]:
    gpu = next(g for g in backend.inventory().gpus if str(g.address) == pf)
    return {s.id: s.holder for s in gpu.sharing.shares}


# -- real outputs ------------------------------------------------------------------------------------------

def _opennebula_pf_xml() -> str:
    text = (CORPUS / "opennebula-vgpu-a10-sriov.txt").read_text()
    return text[text.index("<device>"):text.index("</device>") + len("</device>")]


def test_the_real_a10_pf_reads_as_an_sriov_pf_with_no_vf_enabled_yet():
    parsed = parse_pci_nodedev(_opennebula_pf_xml())
    assert parsed is not None and parsed.is_physical_function and parsed.physical_function is None
    assert parsed.max_virtual_functions == 32 and parsed.virtual_functions == ()
    assert str(parsed.function.address) == "0000:41:00.0" and parsed.function.driver == "nvidia"


def _a10_vfs() -> list[str]:
    """The VF addresses the published virtfn links name (the doc elides the others)."""
    text = (CORPUS / "opennebula-vgpu-a10-sriov.txt").read_text()
    return sorted(re.findall(r"virtfn\d+ -> \.\./(\S+)", text))


def test_the_real_a10_vfs_are_shares_of_their_pf_and_not_gpus(tmp_path, open_backend, registry):
    """The A10 once `sriov-manage -e` ran: the PF as published with the VFs its virtfn links name. 41:00.4 and
    41:00.5 sit in the PF's slot: a tool that took them for functions of one card would make them companions of the
    GPU (and pass them through with it). Assumed: the VFs' class and ids are the PF's (OpenNebula's monitoring shows
    41:00.4 as 10de:2236, class 0302), each in an IOMMU group of its own."""
    vfs = _a10_vfs()
    assert vfs == ["0000:41:00.4", "0000:41:00.5", "0000:41:01.6", "0000:41:04.2", "0000:41:04.3"]
    pf = testhost.Function("0000:41:00.0", 0x10DE, 0x2236, 0x030200, "", "NVIDIA Corporation", "nvidia", 44,
                           virtual_functions=tuple(vfs), max_virtual_functions=32)
    functions = [pf] + [testhost.Function(vf, 0x10DE, 0x2236, 0x030200, "", "NVIDIA Corporation", "nvidia",
                                          100 + index, physical_function="0000:41:00.0")
                        for index, vf in enumerate(vfs)]
    uri = testhost.write_host(tmp_path / "a10.xml", functions, [testhost.domain("vm1")])
    backend = open_backend(uri)
    (gpu,) = backend.inventory().gpus
    assert str(gpu.address) == "0000:41:00.0" and gpu.companions == ()
    # NVIDIA's VFs are vGPUs (a vGPU type is set on a VF before a VM can use it): no plain VF share type offered
    assert gpu.sharing.types == () and [s.id for s in gpu.sharing.shares] == vfs
    assert all(s.mode is ShareMode.SRIOV_VF and s.holder is None for s in gpu.sharing.shares)
    with pytest.raises(NotFound, match="offers no share type 'sriov-vf'"):
        make_plan(backend, backend.inventory(), share_request("vm1", "41:00.0"), registry)
    # the PF given whole would take its VFs away: refused
    whole = make_plan(backend, backend.inventory(),
                      AssignmentRequest("vm1", ("41:00.0",), AssignOptions()), registry)
    assert whole.blocked and "gpu-shared" in {f.code for f in whole.findings}


def _lspci_functions() -> list[testhost.Function]:
    """The Alder Lake-N functions `lspci -nnk` printed: address, class, ids and driver of each."""
    text = (CORPUS / "lspci-nnk-alder-lake-n-vfs-i915-sriov-dkms-342.txt").read_text()
    functions = []
    for block in re.split(r"\n(?=[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] )", text.split("#  lspci -nnk\n", 1)[1]):
        head = re.match(r"([0-9a-f:.]+) .*\[([0-9a-f]{4})\]: .*\[([0-9a-f]{4}):([0-9a-f]{4})\]", block)
        driver = re.search(r"Kernel driver in use: (\S+)", block)
        if head and driver:
            functions.append(testhost.Function("0000:" + head[1], int(head[3], 16), int(head[4], 16),
                                               int(head[2], 16) << 8, "Alder Lake-N", "Intel", driver[1]))
    return functions


def test_the_real_alder_lake_n_vfs_are_free_shares_given_and_taken_back(tmp_path, open_backend, registry):
    """The PF and VFs as `lspci -nnk` printed them (the PF's VF list is what lspci shows enabled: 00:02.1-00:02.4;
    the report goes on past 00:02.4). Assumed: maxCount 7 (`sriov_totalvfs` of another Alder Lake-N, i915-sriov-dkms
    issue #352) and an IOMMU group per function. All functions share slot 00:02 with the PF."""
    printed = [f for f in _lspci_functions() if f.address.startswith("0000:00:02.")]
    assert [f.address for f in printed] == [PF, *VFS]
    assert {(f.vendor_id, f.device_id, f.class_code, f.driver) for f in printed} == {(0x8086, 0x46D3, 0x030000, "i915")}
    pf = testhost.Function(**{**printed[0].__dict__, "group": 0, "virtual_functions": VFS, "max_virtual_functions": 7})
    vfs = [testhost.Function(**{**f.__dict__, "group": 10 + i, "physical_function": PF}) for i, f in enumerate(printed[1:])]
    uri = testhost.write_host(tmp_path / "adl.xml", [pf, *vfs], [testhost.domain("vm1"), testhost.domain("vm2")])
    backend = open_backend(uri)
    (gpu,) = backend.inventory().gpus
    assert gpu.companions == () and [t.id for t in gpu.sharing.types] == [SRIOV_VF_TYPE]
    (vf_type,) = gpu.sharing.types
    assert vf_type.max_instances == 7 and vf_type.available == 0 and "4 of 7" in vf_type.description
    assert holders(backend) == dict.fromkeys(VFS)

    execute(backend, make_plan(backend, backend.inventory(), share_request("vm1", "00:02.0"), registry))
    execute(backend, make_plan(backend, backend.inventory(), share_request("vm2", "00:02.0"), registry))
    assert holders(backend) == {VFS[0]: "vm1", VFS[1]: "vm2", VFS[2]: None, VFS[3]: None}
    execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest("vm1"), registry))
    assert holders(backend) == {VFS[0]: None, VFS[1]: "vm2", VFS[2]: None, VFS[3]: None}


# -- lab-kvm ------------------------------------------------------------------------------------------

HOST = "lab-kvm"


def run(*args: str, code: int = 0) -> dict:
    result = gpupass(*args, expect=code)
    return json.loads(result.stdout) if "--json" in args and result.stdout.strip() else {}


def vf_sharing() -> dict:
    gpus = run("gpus", HOST, "--json")["gpus"]
    return next(g for g in gpus if g["address"] == PF)["sharing"]


def test_lab_lists_the_pf_with_its_vfs_total_free_and_holders():
    sharing = vf_sharing()
    assert sharing["modes"] == ["sriov-vf"]
    assert sharing["types"] == [{"id": "sriov-vf", "name": "SR-IOV virtual function", "mode": "sriov-vf",
                                 "available": 0, "max_instances": 7, "framebuffer_bytes": None,
                                 "description": "4 of 7 virtual functions enabled by the host; each is given to one "
                                                "VM as a PCI device"}]
    assert [(s["id"], s["holder"]) for s in sharing["shares"]] == [(vf, None) for vf in VFS]
    text = gpupass("gpus", HOST).stdout
    assert f"{PF}: 1 sriov-vf types (1 with room now), 4 in use (4 held by no VM)" in text
    # a VF is not a GPU of its own: naming it says whose share it is
    result = gpupass("check", HOST, "ml-train", "00:02.1", expect=2)
    assert f"0000:00:02.1 is a sriov-vf share of GPU {PF}, not a GPU" in result.stderr
    assert "--share sriov-vf" in result.stderr


def test_lab_a_vf_is_given_claimed_like_a_gpu_and_taken_back(lab_file, open_backend, registry):
    backend = open_backend(lab_file)
    before = backend._current_xml("ml-train")
    plan = make_plan(backend, backend.inventory(), share_request("ml-train", PF), registry)
    assert not plan.blocked and [s.action for s in plan.steps] == ["kvm.define-domain", "kvm.managed-binding"]
    define = plan.steps[0].payload
    assert isinstance(define, DefineDomain) and define.claims == (VFS[0],)  # claimed like passthrough
    assert "managed=\"yes\"" in plan.steps[0].preview and "function=\"0x1\"" in plan.steps[0].preview
    assert plan.features_lost[0].feature == "live migration"
    execute(backend, plan)
    assert holders(backend)[VFS[0]] == "ml-train"
    assert PciAddress.parse(VFS[0]) in domxml.read_facts(backend._current_xml("ml-train")).hostdevs

    again = make_plan(backend, backend.inventory(), share_request("ml-train", PF), registry)
    assert again.steps == () and again.shares[0].share.id == VFS[0]  # already holds one: nothing to do

    # the PF cannot go whole to another VM while a VF is held
    whole = make_plan(backend, backend.inventory(), AssignmentRequest("render01", (PF,), AssignOptions()), registry)
    blocker = next(f for f in whole.findings if f.code == "gpu-shared")
    assert blocker.blocks and "'ml-train'" in blocker.message and "SR-IOV virtual functions" in blocker.remedy

    released = make_plan(backend, backend.inventory(), ReleaseRequest("ml-train"), registry)
    assert released.operation == "release-share" and released.shares[0].share.id == VFS[0]
    execute(backend, released)
    assert holders(backend) == dict.fromkeys(VFS)
    assert domxml.read_facts(backend._current_xml("ml-train")) == domxml.read_facts(before)


def test_no_free_vf_is_a_preflight_blocker(tmp_path, open_backend, registry):
    pf = testhost.Function(PF, 0x8086, 0x46D3, 0x030000, "", "", "i915", 0, virtual_functions=(VFS[0],),
                           max_virtual_functions=7)
    vf = testhost.Function(VFS[0], 0x8086, 0x46D3, 0x030000, "", "", "i915", 1, physical_function=PF)
    uri = testhost.write_host(tmp_path / "one-vf.xml", [pf, vf],
                              [testhost.domain("holder", hostdevs=[VFS[0]]), testhost.domain("vm2")])
    backend = open_backend(uri)
    assert holders(backend) == {VFS[0]: "holder"}
    plan = make_plan(backend, backend.inventory(), share_request("vm2", PF), registry)
    blocker = next(f for f in plan.findings if f.code == "share-capacity-exhausted")
    assert plan.blocked and blocker.blocks and plan.steps == ()
    assert "no free virtual function: all 1 enabled are held by VMs (7 can be enabled)" in blocker.message


def test_a_vf_is_refused_while_its_pf_is_given_whole(tmp_path, open_backend, registry):
    """PF given away (bound to vfio-pci at VM start) takes its VFs with it: a VF share is refused."""
    pf = testhost.Function(PF, 0x8086, 0x46D3, 0x030000, "", "", "i915", 0, virtual_functions=VFS[:2],
                           max_virtual_functions=7)
    vfs = [testhost.Function(v, 0x8086, 0x46D3, 0x030000, "", "", "i915", 1 + i, physical_function=PF)
           for i, v in enumerate(VFS[:2])]
    uri = testhost.write_host(tmp_path / "pf-whole.xml", [pf, *vfs],
                              [testhost.domain("whole", hostdevs=[PF]), testhost.domain("vm2")])
    backend = open_backend(uri)
    plan = make_plan(backend, backend.inventory(), share_request("vm2", PF), registry)
    assert plan.blocked and "gpu-assigned-whole" in {f.code for f in plan.findings if f.blocks}


def test_a_vf_named_in_a_release_points_at_its_pf(lab_file, open_backend, registry):
    backend = open_backend(lab_file)
    with pytest.raises(UsageError, match="is a sriov-vf share of GPU 0000:00:02.0"):
        make_plan(backend, backend.inventory(), ReleaseRequest("ml-train", ("00:02.3",)), registry)


def test_vfs_that_are_mdev_parents_give_their_types_to_the_card(tmp_path, open_backend, registry):
    """NVIDIA vGPU up to release 16 on Ampere makes each VF an mdev parent (one vGPU per VF): the card offers its VFs'
    types with their room summed, their devices are its shares, and a new device is created on a VF with room.
    Assumed host: an A100's PF with two VFs offering GRID A100-4C, one instance each, a device on the first."""
    pf = testhost.Function("0000:41:00.0", 0x10DE, 0x20F1, 0x030200, "", "", "nvidia", 20,
                           virtual_functions=("0000:41:00.4", "0000:41:00.5"), max_virtual_functions=16)
    vfs = [testhost.Function(v, 0x10DE, 0x20F1, 0x030200, "", "", "nvidia", 21 + i, physical_function=pf.address)
           for i, v in enumerate(pf.virtual_functions)]
    path = tmp_path / "a100.xml"
    testhost.write_host(path, [pf, *vfs], [testhost.domain("vm1"), testhost.domain("vm2")])
    text = path.read_text()
    for function, room in (("4", 0), ("5", 1)):
        text = text.replace(
            f"<function>{function}</function>", f"<function>{function}</function><capability type='mdev_types'>"
            "<type id='nvidia-471'><name>GRID A100-4C</name><deviceAPI>vfio-pci</deviceAPI>"
            f"<availableInstances>{room}</availableInstances></type></capability>", 1)
    device = ("<device><name>mdev_11111111_2222_3333_4444_555555555555_0000_41_00_4</name>"
              "<parent>pci_0000_41_00_4</parent><capability type='mdev'><type id='nvidia-471'/>"
              "<uuid>11111111-2222-3333-4444-555555555555</uuid></capability></device>")
    path.write_text(text.replace("<domain type=", device + "<domain type=", 1))
    backend = open_backend(path)
    (gpu,) = backend.inventory().gpus
    assert [(t.id, t.available) for t in gpu.sharing.types] == [("nvidia-471", 1)] and gpu.sharing.unread == ""
    assert {s.id: s.type_id for s in gpu.sharing.shares} == {
        "11111111-2222-3333-4444-555555555555": "nvidia-471", "0000:41:00.4": "sriov-vf", "0000:41:00.5": "sriov-vf"}
    plan = make_plan(backend, backend.inventory(), share_request("vm1", "41:00.0", "A100-4C"), registry)
    # the admin's free device on 41:00.4 is given first
    assert [s.action for s in plan.steps] == ["kvm.define-domain"]
    execute(backend, plan)
    plan = make_plan(backend, backend.inventory(), share_request("vm2", "41:00.0", "A100-4C"), registry)
    assert plan.steps[0].action == "kvm.record-mdev-intent" and plan.steps[0].payload.intent.parent == "pci_0000_41_00_5"
    create = plan.steps[1].payload
    assert plan.steps[1].action == "kvm.create-mdev" and create.parent == "pci_0000_41_00_5"  # the VF with room
