"""ESXi vGPU profiles in gpupass' inventory: real pyvmomi against the simulator's shared-direct host (esx03)."""

from __future__ import annotations

import pytest

from gpupass.backends.esxi.lab.simulator import P40_VGPU_TYPES, lab_config
from gpupass.core import plugins
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.domain.select import GpuSelector
from gpupass.core.domain.sharing import ShareMode
from gpupass.core.serialize import sharing_to_dict
from gpupass.core.service import make_plan
from gpupass.core.target import Secret, Target, TlsOptions

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

ESX03 = "esx03.lab.local"
P40_A, P40_B = PciAddress.parse("0000:3b:00.0"), PciAddress.parse("0000:af:00.0")
HOSTILE = "vdi <'\"&> ; $(x)"


def backend_for(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(Target(uri=f"esxi://gpupass@127.0.0.1:{sim.port}/Lab", name="vcsim",
                              password=Secret(sim.password), tls=TlsOptions(ca_file=str(sim.ca_file))))


def gpu(facts, address):
    return next(g for g in facts.gpus if g.location == ESX03 and g.address == address)


def test_inventory_reads_profiles_and_running_vgpus_in_one_collector_read(fresh_vcsim):
    cfg = lab_config()
    cfg["vms"].append({"name": HOSTILE, "host": ESX03, "power_state": "poweredOn", "memory_mb": 2048,
                       "memory_reservation_locked_to_max": True, "vgpus": ["grid_p40-2b"]})
    backend = backend_for(fresh_vcsim(cfg))
    try:
        facts = backend.inventory()
        assert backend.round_trips <= 6  # the graphics properties ride on the one RetrievePropertiesEx
        first = gpu(facts, P40_A).sharing
        assert first.modes == (ShareMode.VGPU_PROFILE,)
        types = {t.id: t for t in first.types}
        assert list(types) == [name for name, *_ in P40_VGPU_TYPES]
        # performance policy: vdi01 powered on first and took the first P40, the hostile VM the emptier second
        # ml-vgpu is off: its grid_p40-4c is on no GPU yet; both GPUs run 2B, so it is shown on the first offering it
        placed = {g: sorted(s.holder for s in gpu(facts, g).sharing.shares) for g in (P40_A, P40_B)}
        assert placed == {P40_A: ["ml-vgpu", "vdi01"], P40_B: [HOSTILE]}
        parked = next(s for s in gpu(facts, P40_A).sharing.shares if s.holder == "ml-vgpu")
        assert (parked.id, parked.type_id) == ("ml-vgpu/vgpu-1", "grid_p40-4c")
        assert (types["grid_p40-2b"].available, types["grid_p40-2b"].max_instances) == (11, 12)
        assert types["grid_p40-4c"].available == 0  # one profile per GPU
        assert types["grid_p40-4c"].framebuffer_bytes == 4 << 30
        share = next(s for s in first.shares if s.holder == "vdi01")
        assert (share.id, share.type_id, share.mode) == ("vdi01/vgpu-1", "grid_p40-2b", ShareMode.VGPU_PROFILE)
        vms = {vm.name: vm for vm in facts.vms}
        assert vms["ml-vgpu"].settings["vgpu_profiles"] == ["grid_p40-4c"]
        assert vms[HOSTILE].settings["vgpu_profiles"] == ["grid_p40-2b"]
        graphics = facts.host.settings["hosts"][ESX03]["graphics"]
        assert graphics == {"default_type": "sharedDirect", "assignment_policy": "performance",
                            "vgpu_profiles": [name for name, *_ in P40_VGPU_TYPES], "device_types": {},
                            "active_types": {"0000:00:0f.0": "basic", str(P40_A): "sharedDirect",
                                             str(P40_B): "sharedDirect"},
                            "running_vgpus": {str(P40_A): 1, str(P40_B): 1}}
        assert not gpu(facts, P40_A).assigned_to  # a vGPU is not a whole-GPU assignment
        json_types = sharing_to_dict(first)["types"]
        assert json_types[0]["max_instances"] == 12 and json_types[0]["mode"] == "vgpu-profile"
    finally:
        backend.close()


def test_hosts_without_vgpu_manager_show_no_sharing(vcsim):
    backend = backend_for(vcsim)
    try:
        facts = backend.inventory()
        assert all(not g.sharing.offered and not g.sharing.in_use for g in facts.gpus if g.location != ESX03)
        assert facts.host.settings["hosts"]["esx02.lab.local"]["graphics"]["vgpu_profiles"] == []
    finally:
        backend.close()


def whole(backend, facts, address):
    request = AssignmentRequest("infer01", (GpuSelector(f"{ESX03}/{address}"),))
    return {f.code: f for f in make_plan(backend, facts, request, plugins.default_registry()).findings}


def test_whole_gpu_passthrough_of_a_gpu_holding_vgpus_is_blocked(vcsim):
    backend = backend_for(vcsim)
    try:
        facts = backend.inventory()
        running = whole(backend, facts, P40_A)["gpu-shared"]
        assert running.blocks and "vdi01" in running.message and "grid_p40-2b" in running.message
        # the other P40 is where ml-vgpu's 4C would go at power-on (the first runs a 2B): taking it whole would
        # leave ml-vgpu unable to start
        parked = whole(backend, facts, P40_B)["gpu-shared"]
        assert parked.blocks and "ml-vgpu" in parked.message and "grid_p40-4c" in parked.message
    finally:
        backend.close()


def test_an_idle_shared_direct_gpu_can_be_given_whole(fresh_vcsim):
    cfg = lab_config()
    cfg["vms"] = [vm for vm in cfg["vms"] if vm["name"] != "ml-vgpu"]
    backend = backend_for(fresh_vcsim(cfg))
    try:
        codes = whole(backend, backend.inventory(), P40_B)
        assert "gpu-shared" not in codes and not codes["gpu-sharing-withdrawn"].blocks
    finally:
        backend.close()


def test_powering_a_vgpu_vm_on_and_off_moves_capacity(fresh_vcsim, connect):
    sim = fresh_vcsim()
    si = connect(sim)
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    ml = next(vm for vm in view.view if vm.name == "ml-vgpu")
    view.Destroy()
    backend = backend_for(sim)
    try:
        WaitForTask(ml.PowerOnVM_Task())
        second = gpu(backend.inventory(), P40_B).sharing
        assert {t.id: t.available for t in second.types}["grid_p40-4c"] == 5
        assert [(s.id, s.holder) for s in second.shares] == [("ml-vgpu/vgpu-1", "ml-vgpu")]
        WaitForTask(ml.PowerOffVM_Task())
        second = gpu(backend.inventory(), P40_B).sharing
        assert {t.id: t.available for t in second.types}["grid_p40-4c"] == 6  # off: parked, takes no room
        assert [(s.id, s.holder) for s in second.shares] == [("ml-vgpu/vgpu-1", "ml-vgpu")]
    finally:
        backend.close()
