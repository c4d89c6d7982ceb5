"""The ESXi vGPU step (backends/esxi/shares.py, steps.VgpuReconfigure): apply, read back, undo, refusals and the
rollback of a failed reconfigure, with real pyvmomi against the simulator's shared-direct host esx03."""

from __future__ import annotations

import json

import pytest

from gpupass.backends.esxi import shares
from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.backends.esxi.steps import VgpuReconfigure
from gpupass.core.domain.plan import Step
from gpupass.core.errors import Conflict, OperationFailed
from gpupass.core.target import Secret, Target, TlsOptions

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

ESX03 = "esx03.lab.local"
P40_B = "0000:af:00.0"
HOSTILE = "infer <'\"&> ; $(x) `y`"
RECORD = "gpupass.assignment"


@pytest.fixture
def sim(fresh_vcsim):
    cfg = lab_config()
    cfg["vms"].append({"name": HOSTILE, "host": ESX03, "firmware": "efi", "memory_mb": 8192,
                       "memory_reservation_mb": 1024})
    return fresh_vcsim(cfg)


@pytest.fixture
def backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    b = EsxiBackend(Target(uri=f"esxi://gpupass@127.0.0.1:{sim.port}/Lab", name="vcsim",
                           password=Secret(sim.password), tls=TlsOptions(ca_file=str(sim.ca_file))))
    yield b
    b.close()


def vm_obj(si, name):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def vgpus(vm):
    return [d.backing.vgpu for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualPCIPassthrough)
            and isinstance(d.backing, vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo)]


def step(backend, vm, changes_for):
    raw = backend.inventory().state.vms[vm]
    return Step("esxi.vgpu", f"vGPU change of {vm}", "inverse ConfigSpec", needs_vm_off=True,
                payload=VgpuReconfigure(vm, raw.host, changes_for(raw), raw.change_version))


def add(profile="grid_p40-4c"):
    return lambda raw: shares.assign_changes(raw, profile, P40_B)


def test_add_read_back_undo_and_release(sim, backend, connect):
    vm = vm_obj(connect(sim), HOSTILE)
    added = step(backend, HOSTILE, add())
    token = backend.apply(added)
    assert vgpus(vm) == ["grid_p40-4c"] and vm.config.memoryReservationLockedToMax is True
    record = json.loads({o.key: o.value for o in vm.config.extraConfig}[RECORD])
    assert record["vgpus"] == [{"index": 1, "profile": "grid_p40-4c", "gpu": P40_B}]
    assert record["previous"] == {"reservation_mb": 1024, "locked": False}
    assert backend.observe(added).state == "after"
    # the inventory shows it on the GPU named, though ESXi places it only at power-on
    gpu = next(g for g in backend.inventory().gpus if g.location == ESX03 and str(g.address) == P40_B)
    assert [(s.id, s.type_id) for s in gpu.sharing.shares if s.holder == HOSTILE] == [(f"{HOSTILE}/vgpu-1",
                                                                                        "grid_p40-4c")]
    backend.undo(added, token)
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False
    assert vm.config.memoryAllocation.reservation == 1024 and RECORD not in {o.key for o in vm.config.extraConfig}
    # again, power it on and off (ESXi places it: all memory reserved), then the release restores what was found
    backend.apply(step(backend, HOSTILE, add()))
    WaitForTask(vm.PowerOnVM_Task())
    WaitForTask(vm.PowerOffVM_Task())
    backend.apply(step(backend, HOSTILE, lambda raw: shares.release_changes(raw, [(1, "grid_p40-4c")])))
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False
    assert vm.config.memoryAllocation.reservation == 1024 and RECORD not in {o.key for o in vm.config.extraConfig}


def test_a_vm_changed_since_the_plan_is_not_touched(sim, backend, connect):
    planned = step(backend, "infer01", add())
    vm = vm_obj(connect(sim), "infer01")
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="changed by someone else")))
    with pytest.raises(Conflict):
        backend.apply(planned)
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False


def test_a_profile_the_host_no_longer_offers_changes_nothing(sim, backend, connect):
    planned = step(backend, "infer01", add())
    si = connect(sim)
    WaitForTask(vm_obj(si, "vdi01").PowerOffVM_Task())
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.HostSystem], True)
    host = next(h for h in view.view if h.name == ESX03)
    view.Destroy()
    host.configManager.graphicsManager.UpdateGraphicsConfig(vim.host.GraphicsConfig(
        hostDefaultGraphicsType="shared", sharedPassthruAssignmentPolicy="performance"))
    host.configManager.serviceSystem.RestartService("xorg")  # the change takes effect
    with pytest.raises(OperationFailed) as err:
        backend.apply(planned)
    assert "does not offer vGPU profile grid_p40-4c" in err.value.message
    assert vgpus(vm_obj(si, "infer01")) == []


def test_a_failed_reconfigure_is_read_back_and_reported_rolled_back(sim, backend, connect):
    planned = step(backend, "infer01", add())
    sim.disconnect_host(ESX03, after="ReconfigVM_Task")  # the host vanishes as the reconfigure arrives
    with pytest.raises(OperationFailed) as err:
        backend.apply(planned)
    assert err.value.rolled_back is True
    sim.reconnect_host(ESX03)
    vm = vm_obj(connect(sim), "infer01")
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False


def test_a_vgpu_added_by_other_tools_is_removed_and_the_reservation_left(sim, backend, connect):
    backend.apply(step(backend, "ml-vgpu", lambda raw: shares.release_changes(raw, [(1, "grid_p40-4c")])))
    vm = vm_obj(connect(sim), "ml-vgpu")
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is True
