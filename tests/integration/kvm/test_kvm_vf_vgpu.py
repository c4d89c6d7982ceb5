"""NVIDIA vGPU on SR-IOV virtual functions (vGPU 17+, no mediated devices) on KVM, through libvirt's test driver.

libvirt reports the PF and its VFs (virt_functions / phys_function); NVIDIA's per-VF files are in the host's sysfs,
which gpupass reads on the host itself only. The lab backend reads them from a folder laid out like
/sys/bus/pci/devices (target option `sysfs_root`) and MIG mode from a file of `nvidia-smi -q` text (`nvidia_smi_q`),
so the same code runs here as on a host. Each host below is built from real published outputs
(tests/fixtures/real/sharing); what is assumed is said at each.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.lab import testhost
from gpupass.backends.kvm.steps import DefineDomain, SetVfVgpuType
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.domain.sharing import ShareMode
from gpupass.core.errors import Conflict, NotFound, NotSupported, OperationFailed
from gpupass.core.service import execute, make_plan

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "sharing"
A10 = "0000:41:00.0"
A10_VFS = ("0000:41:00.4", "0000:41:00.5")


def _a10_profiles() -> str:
    """The vGPU types OpenNebula's monitoring printed for the A10's VF 41:00.4 (PROFILES, "588 (NVIDIA A10-1B),..."),
    written in creatable_vgpu_types' "ID : name" form (assumed: the same list for 41:00.5, a VF of the same card)."""
    doc = (CORPUS / "opennebula-vgpu-a10-sriov.txt").read_text()
    profiles = re.search(r'"PROFILES": "([^"]+)"', doc)[1]
    return "".join(f"{m[1]} : {m[2]}\n" for m in re.finditer(r"(\d+) \(([^)]+)\)", profiles))


def a10_host(tmp_path: Path, with_sysfs: bool = True) -> tuple[str, dict]:
    """The A10 of OpenNebula's guide (nodedev-dumpxml: 10de:2236, nvidia, maxCount 32) with two of the VFs its
    virtfn links name; their class and ids are the PF's (OpenNebula's monitoring shows 41:00.4 as 10de:2236, 0302)."""
    pf = testhost.Function(A10, 0x10DE, 0x2236, 0x030200, "", "NVIDIA Corporation", "nvidia", 44,
                           virtual_functions=A10_VFS, max_virtual_functions=32)
    vfs = [testhost.Function(vf, 0x10DE, 0x2236, 0x030200, "", "NVIDIA Corporation", "nvidia", 100 + i,
                             physical_function=A10) for i, vf in enumerate(A10_VFS)]
    uri = testhost.write_host(tmp_path / "a10.xml", [pf, *vfs], [testhost.domain("vm1"), testhost.domain("vm2")])
    options: dict = {}
    if with_sysfs:
        root = tmp_path / "sys-bus-pci-devices"
        for vf in A10_VFS:
            (root / vf / "nvidia").mkdir(parents=True)
            (root / vf / "nvidia" / "creatable_vgpu_types").write_text(_a10_profiles())
            (root / vf / "nvidia" / "current_vgpu_type").write_text("0\n")
        options["sysfs_root"] = str(root)
    return uri, options


def current(options: dict, vf: str) -> str:
    return (Path(options["sysfs_root"]) / vf / "nvidia" / "current_vgpu_type").read_text().strip()


def request(vm: str, gpu: str, share: str) -> AssignmentRequest:
    return AssignmentRequest(vm, (gpu,), AssignOptions(share=share))


def test_per_vf_vgpu_types_are_listed_with_room_and_the_vfs_as_shares(tmp_path, open_backend):
    uri, options = a10_host(tmp_path)
    (gpu,) = open_backend(uri, **options).inventory().gpus
    types = {t.id: (t.name, t.available, t.mode) for t in gpu.sharing.types}
    assert len(types) == 18 and sorted(types)[0] == "588" and sorted(types)[-1] == "605"
    assert types["591"] == ("NVIDIA A10-2Q", 2, ShareMode.VF_VGPU)  # two VFs with no type can each take it
    assert [(s.id, s.type_id, s.holder) for s in gpu.sharing.shares] == [(vf, "sriov-vf", None) for vf in A10_VFS]
    assert gpu.sharing.unread == "" and gpu.sharing.mig_mode is None  # no nvidia-smi report given


def test_a_vf_vgpu_is_set_given_and_taken_back_with_the_type_cleared(tmp_path, open_backend, registry):
    uri, options = a10_host(tmp_path)
    backend = open_backend(uri, **options)
    before = backend._current_xml("vm1")
    plan = make_plan(backend, backend.inventory(), request("vm1", A10, "A10-2Q"), registry)
    assert not plan.blocked and [s.action for s in plan.steps] == ["kvm.set-vf-vgpu-type", "kvm.define-domain"]
    assert plan.steps[0].payload == SetVfVgpuType(A10_VFS[0], "591", "0")
    define = plan.steps[1].payload
    assert isinstance(define, DefineDomain) and define.claims == (A10_VFS[0],)
    assert "managed=\"no\"" in plan.steps[1].preview  # the VF stays on the nvidia driver at VM start
    license_note = next(f for f in plan.findings if f.code == "nvidia-vgpu-license")
    assert not license_note.blocks and "driver nvidia" in license_note.message

    execute(backend, plan)
    assert current(options, A10_VFS[0]) == "591"
    (gpu,) = backend.inventory().gpus
    held = {s.id: (s.type_id, s.mode, s.holder) for s in gpu.sharing.shares}
    assert held[A10_VFS[0]] == ("591", ShareMode.VF_VGPU, "vm1") and held[A10_VFS[1]][2] is None

    released = make_plan(backend, backend.inventory(), ReleaseRequest("vm1"), registry)
    assert [s.action for s in released.steps] == ["kvm.define-domain", "kvm.set-vf-vgpu-type"]
    execute(backend, released)
    assert current(options, A10_VFS[0]) == "0"
    assert domxml.read_facts(backend._current_xml("vm1")) == domxml.read_facts(before)


def test_a_vf_an_admin_configured_is_given_and_keeps_its_type(tmp_path, open_backend, registry):
    uri, options = a10_host(tmp_path)
    (Path(options["sysfs_root"]) / A10_VFS[1] / "nvidia" / "current_vgpu_type").write_text("589\n")
    backend = open_backend(uri, **options)
    plan = make_plan(backend, backend.inventory(), request("vm2", A10, "A10-2B"), registry)
    assert [s.action for s in plan.steps] == ["kvm.define-domain"]  # a free VF of that type: no write
    execute(backend, plan)
    execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest("vm2"), registry))
    assert current(options, A10_VFS[1]) == "589"  # an admin's type stays


def test_a_failed_define_undoes_the_type_write(tmp_path, open_backend, registry):
    uri, options = a10_host(tmp_path)
    backend = open_backend(uri, **options)
    plan = make_plan(backend, backend.inventory(), request("vm1", A10, "591"), registry)
    with pytest.raises(Conflict):  # the VM changed since the plan: the define refuses, the written type is undone
        execute(backend, _with_stale_define(plan))
    assert current(options, A10_VFS[0]) == "0"


def _with_stale_define(plan):
    """The plan with its define step expecting a definition the VM no longer has (someone changed it meanwhile)."""
    import dataclasses

    steps = list(plan.steps)
    define = steps[1].payload
    steps[1] = dataclasses.replace(steps[1], payload=dataclasses.replace(define, old_xml=define.old_xml.replace(
        "<vcpu", "<!-- changed --><vcpu")))
    return dataclasses.replace(plan, steps=tuple(steps))


def test_over_a_remote_uri_the_types_are_not_listed_and_setting_one_is_not_supported(tmp_path, open_backend,
                                                                                     registry):
    uri, options = a10_host(tmp_path)
    remote = open_backend(uri)  # no sysfs of the host: what a qemu+ssh:// connection sees
    (gpu,) = remote.inventory().gpus
    assert gpu.sharing.types == () and "only on the host itself" in gpu.sharing.unread
    with pytest.raises(NotFound) as refused:
        make_plan(remote, remote.inventory(), request("vm1", A10, "A10-2Q"), registry)
    assert "only on the host itself" in (refused.value.remedy or "")
    local_facts = open_backend(uri, **options).inventory()  # e.g. a snapshot taken on the host
    plan = make_plan(remote, local_facts, request("vm1", A10, "A10-2Q"), registry)
    assert plan.steps[0].action == "kvm.set-vf-vgpu-type"  # the plan shows what it takes
    before = remote._current_xml("vm1")
    with pytest.raises(OperationFailed, match="not supported over a remote URI") as refused:
        execute(remote, plan)  # the first step stops before writing anything
    assert refused.value.rolled_back and "nothing was changed" in refused.value.message
    assert isinstance(refused.value.__cause__, NotSupported) and "echo 591 >" in (refused.value.__cause__.remedy or "")
    assert current(options, A10_VFS[0]) == "0" and remote._current_xml("vm1") == before


# -- MIG mode ---------------------------------------------------------------------------------------------------

def h200x_host(tmp_path: Path, report: str) -> tuple[str, dict]:
    """A PF at 0000:07:00.0 (the bus id of the real `nvidia-smi -a` report) whose VF lists the real H200X types
    (creatable_vgpu_types in NVIDIA's kubevirt-gpu-device-plugin README). Assumed: the ids and the VF's address; the
    report is an A100's, used here for its MIG Mode block (the rule reads only that)."""
    pf_address, vf_address = "0000:07:00.0", "0000:07:00.4"
    pf = testhost.Function(pf_address, 0x10DE, 0x2335, 0x030200, "", "NVIDIA Corporation", "nvidia", 7,
                           virtual_functions=(vf_address,), max_virtual_functions=16)
    vf = testhost.Function(vf_address, 0x10DE, 0x2335, 0x030200, "", "NVIDIA Corporation", "nvidia", 70,
                           physical_function=pf_address)
    uri = testhost.write_host(tmp_path / "h200x.xml", [pf, vf], [testhost.domain("vm1")])
    text = (CORPUS / "creatable-vgpu-types-h200x-kubevirt-plugin.txt").read_text()
    listed = text.split("creatable_vgpu_types\n", 1)[1].split("\n\n", 1)[0]
    root = tmp_path / "sys"
    (root / vf_address / "nvidia").mkdir(parents=True)
    (root / vf_address / "nvidia" / "creatable_vgpu_types").write_text(listed + "\n")
    (root / vf_address / "nvidia" / "current_vgpu_type").write_text("0\n")
    query = tmp_path / "nvidia-smi-q.txt"
    query.write_text("\n".join(line for line in (CORPUS / report).read_text().splitlines()
                               if not line.startswith(("# ", "$ ", "[...]"))))
    return uri, {"sysfs_root": str(root), "nvidia_smi_q": str(query)}


def codes(plan) -> dict[str, bool]:
    return {f.code: f.blocks for f in plan.findings}


def test_a_mig_backed_type_is_refused_on_a_gpu_not_in_mig_mode(tmp_path, open_backend, registry):
    uri, options = h200x_host(tmp_path, "nvidia-smi-q-mig-disabled-a100-k8s-device-plugin-343.txt")
    backend = open_backend(uri, **options)
    (gpu,) = backend.inventory().gpus
    assert gpu.sharing.mig_mode is False
    mig = make_plan(backend, backend.inventory(), request("vm1", "07:00.0", "H200X-1-18C"), registry)
    assert mig.blocked and codes(mig)["mig-mode-disabled"] is True
    sliced = make_plan(backend, backend.inventory(), request("vm1", "07:00.0", "H200X-141C"), registry)
    assert not sliced.blocked and not {"mig-mode-disabled", "mig-mode-enabled", "mig-mode-unknown"} & set(codes(sliced))


def test_a_time_sliced_type_on_a_gpu_in_mig_mode_is_a_warning(tmp_path, open_backend, registry):
    uri, options = h200x_host(tmp_path, "nvidia-smi-q-mig-enabled-opennebula.txt")
    backend = open_backend(uri, **options)
    assert backend.inventory().gpus[0].sharing.mig_mode is True  # the one GPU's lines, without a heading
    sliced = make_plan(backend, backend.inventory(), request("vm1", "07:00.0", "H200X-141C"), registry)
    assert codes(sliced)["mig-mode-enabled"] is False
    mig = make_plan(backend, backend.inventory(), request("vm1", "07:00.0", "1414"), registry)
    assert not {"mig-mode-disabled", "mig-mode-enabled", "mig-mode-unknown"} & set(codes(mig))


def test_a_mig_backed_type_where_mig_mode_cannot_be_read_is_a_warning(tmp_path, open_backend, registry):
    uri, options = h200x_host(tmp_path, "nvidia-smi-q-mig-enabled-opennebula.txt")
    del options["nvidia_smi_q"]
    backend = open_backend(uri, **options)
    plan = make_plan(backend, backend.inventory(), request("vm1", "07:00.0", "H200X-1-18C"), registry)
    assert codes(plan)["mig-mode-unknown"] is False


def test_vfs_without_the_vgpu_managers_files_say_so(tmp_path, open_backend):
    uri, options = a10_host(tmp_path, with_sysfs=False)
    empty = tmp_path / "empty-sys"
    empty.mkdir()
    (gpu,) = open_backend(uri, sysfs_root=str(empty)).inventory().gpus
    assert gpu.sharing.types == () and "vGPU manager (vGPU 17 or later) is not serving them" in gpu.sharing.unread
    assert [s.type_id for s in gpu.sharing.shares] == ["sriov-vf", "sriov-vf"]  # the PF is still not free whole


# -- a gpupass process killed around its sysfs write (the fault matrix's `SetVfVgpuType` rows) -----------------------
def killed_at(uri: str, options: dict, point: str) -> None:
    """Run the assign of an A10-2Q to vm1 in a process of its own and SIGKILL it (a real kill of the process, sent by
    itself at that point, which no sleep could hit) right after its sysfs write, or, with its define refused (the VM
    changed since the plan: the undo then writes the type back), right before or right after the undo's write."""
    import os
    import signal
    import subprocess
    import sys

    script = f"""
import os, signal, sys
sys.path[:0] = {[str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]!r}
from gpupass.backends.kvm.lab.testdriver import LabKvmBackend
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Target
from test_kvm_vf_vgpu import _with_stale_define, request

class KilledAroundItsWrite(LabKvmBackend):
    writes = 0

    def _write_vf_vgpu_type(self, vf, type_id):
        if {point!r} == "before-the-undo-write" and self.writes == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._write_vf_vgpu_type(vf, type_id)
        self.writes += 1
        if ({point!r}, self.writes) in (("after-the-write", 1), ("after-the-undo-write", 2)):
            os.kill(os.getpid(), signal.SIGKILL)

backend = KilledAroundItsWrite(Target(uri={uri!r}, name="killed", options={options!r}))
plan = make_plan(backend, backend.inventory(), request("vm1", {A10!r}, "A10-2Q"), default_registry())
execute(backend, plan if {point!r} == "after-the-write" else _with_stale_define(plan))
print("the run finished: it was not killed")
"""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**os.environ})
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr


@pytest.mark.parametrize("point", ["after-the-write", "before-the-undo-write", "after-the-undo-write"])
def test_a_client_killed_around_its_vf_type_write_leaves_a_free_typed_vf_or_the_host_as_it_was_and_a_rerun_converges(
        tmp_path, open_backend, registry, point):
    """Killed between the sysfs write and the define (or before the undo's write, the define refused): the VF keeps the
    type and no VM holds it. That is a configuration the host holds whole, and gpupass shows it as it is: `gpus` lists
    the VF as a free vGPU of the type (what an admin's `echo TYPE > .../current_vgpu_type` gives), which the next assign
    of that type takes without a write; nothing is lost or held twice, and no VM is half-changed (the define is one
    call). What is lost is only that gpupass set the type: its release then leaves the type on the VF, as it leaves an
    admin's. Killed after the undo's write: exactly as before. Either way the same assign again converges."""
    uri, options = a10_host(tmp_path)
    options = {**options, "persist_test_state": True}
    before = open_backend(uri, **options)._current_xml("vm1")
    killed_at(uri, options, point)
    typed = point != "after-the-undo-write"
    assert current(options, A10_VFS[0]) == ("591" if typed else "0")
    backend = open_backend(uri, **options)
    assert backend._current_xml("vm1") == before  # the VM untouched
    facts = backend.inventory()
    (gpu,) = facts.gpus
    shares = {s.id: (s.type_id, s.mode, s.holder) for s in gpu.sharing.shares}
    assert shares[A10_VFS[0]] == (("591", ShareMode.VF_VGPU, None) if typed else ("sriov-vf", ShareMode.SRIOV_VF, None))
    assert [vm.unfinished for vm in facts.vms] == [(), ()]
    plan = make_plan(backend, facts, request("vm1", A10, "A10-2Q"), registry)
    assert [s.action for s in plan.steps if s.writes] == \
        (["kvm.define-domain"] if typed else ["kvm.set-vf-vgpu-type", "kvm.define-domain"])
    execute(backend, plan)
    assert current(options, A10_VFS[0]) == "591"
    (gpu,) = backend.inventory().gpus
    assert {s.id: s.holder for s in gpu.sharing.shares}[A10_VFS[0]] == "vm1"
    execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest("vm1"), registry))
    assert current(options, A10_VFS[0]) == ("591" if typed else "0")  # a type gpupass did not record stays
