"""Giving an ESXi VM a vGPU and taking it back (backends/esxi/shares.py): real pyvmomi against the simulator's
shared-direct host esx03, through the core's share request (check, plan, execute with rollback, verify)."""

from __future__ import annotations

import json

import pytest

from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core import plugins
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.domain.select import GpuSelector
from gpupass.core.errors import Conflict, NotFound, OperationFailed, PreflightFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target, TlsOptions

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

ESX03 = "esx03.lab.local"
P40_A, P40_B = PciAddress.parse("0000:3b:00.0"), PciAddress.parse("0000:af:00.0")
HOSTILE = "infer <'\"&> ; $(x) `y`"
RECORD = "gpupass.assignment"


def backend_for(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(Target(uri=f"esxi://gpupass@127.0.0.1:{sim.port}/Lab", name="vcsim",
                              password=Secret(sim.password), tls=TlsOptions(ca_file=str(sim.ca_file))))


@pytest.fixture
def sim(fresh_vcsim):
    cfg = lab_config()
    cfg["vms"].append({"name": HOSTILE, "host": ESX03, "firmware": "efi", "memory_mb": 8192,
                       "memory_reservation_mb": 1024})
    return fresh_vcsim(cfg)


@pytest.fixture
def backend(sim):
    b = backend_for(sim)
    yield b
    b.close()


def vm_obj(si, name):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def assign(vm, gpu=P40_B, profile="grid_p40-4c"):
    return AssignmentRequest(vm, (GpuSelector(f"{ESX03}/{gpu}"),), AssignOptions(share=profile))


def release(vm, gpu=P40_B):
    return ReleaseRequest(vm, (GpuSelector(f"{ESX03}/{gpu}"),))


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


def vgpus(vm):
    return [d.backing.vgpu for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualPCIPassthrough)
            and isinstance(d.backing, vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo)]


def test_assign_a_vgpu_then_power_on_then_release_restores_everything(sim, backend, connect):
    si = connect(sim)
    vm = vm_obj(si, HOSTILE)
    planned = plan(backend, assign(HOSTILE))
    assert not planned.blocked
    (step,) = planned.steps
    assert "VmiopBackingInfo vgpu=grid_p40-4c" in step.preview and step.needs_vm_off
    assert {f.feature for f in planned.features_lost} >= {"vMotion and DRS migration"}
    outcome = execute(backend, planned)
    assert outcome.vm_after is not None
    assert vgpus(vm) == ["grid_p40-4c"] and vm.config.memoryReservationLockedToMax is True
    record = json.loads({o.key: o.value for o in vm.config.extraConfig}[RECORD])
    assert record["vgpus"] == [{"index": 1, "profile": "grid_p40-4c", "gpu": str(P40_B)}]
    assert record["previous"] == {"reservation_mb": 1024, "locked": False}
    # shown on the GPU named while off; ESXi puts it on a GPU with room at power-on
    facts = backend.inventory()
    second = next(g for g in facts.gpus if g.location == ESX03 and g.address == P40_B)
    assert [(s.id, s.holder) for s in second.sharing.held_by(HOSTILE)] == [(f"{HOSTILE}/vgpu-1", HOSTILE)]
    assert plan(backend, assign(HOSTILE)).steps == ()  # idempotent
    WaitForTask(vm.PowerOnVM_Task())
    WaitForTask(vm.PowerOffVM_Task())
    back = execute(backend, plan(backend, release(HOSTILE)))
    assert back.plan.steps
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False
    assert vm.config.memoryAllocation.reservation == 1024
    assert RECORD not in {o.key for o in vm.config.extraConfig}


def test_assign_is_refused_while_the_vm_runs_and_for_a_profile_not_offered(backend):
    assert plan(backend, assign("vdi01", P40_A, "grid_p40-2b")).steps == ()  # it holds that vGPU: nothing to do
    running = plan(backend, assign("vdi01", P40_B, "grid_p40-4c"))
    assert running.blocked and "vm-not-off" in {f.code for f in running.findings if f.blocks}
    with pytest.raises(PreflightFailed):
        execute(backend, running)
    with pytest.raises(NotFound):
        plan(backend, assign("infer01", P40_B, "grid_a100-4c"))


def test_one_profile_per_gpu_blocks_a_mixed_assign(backend):
    mixed = plan(backend, assign("infer01", P40_A, "grid_p40-4c"))  # the first P40 runs a 2B
    assert "share-type-mixed" in {f.code for f in mixed.findings if f.blocks}


def test_a_vm_changed_since_the_plan_is_not_touched(sim, backend, connect):
    planned = plan(backend, assign("infer01"))
    vm = vm_obj(connect(sim), "infer01")
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="changed by someone else")))
    with pytest.raises(Conflict):
        execute(backend, planned)
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False


def test_a_profile_withdrawn_since_the_plan_changes_nothing(sim, backend, connect):
    planned = plan(backend, assign("infer01"))
    si = connect(sim)
    host = next(h for h in si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.HostSystem],
                                                                       True).view if h.name == ESX03)
    WaitForTask(vm_obj(si, "vdi01").PowerOffVM_Task())
    host.configManager.graphicsManager.UpdateGraphicsConfig(vim.host.GraphicsConfig(
        hostDefaultGraphicsType="shared", sharedPassthruAssignmentPolicy="performance"))
    host.configManager.serviceSystem.RestartService("xorg")  # the change takes effect
    with pytest.raises(OperationFailed) as err:
        execute(backend, planned)
    assert "does not offer vGPU profile grid_p40-4c" in err.value.message
    assert vgpus(vm_obj(si, "infer01")) == []


def test_a_failed_reconfigure_is_rolled_back(sim, backend, connect):
    planned = plan(backend, assign("infer01"))
    sim.disconnect_host(ESX03, after="ReconfigVM_Task")  # the host vanishes as the reconfigure arrives
    with pytest.raises(OperationFailed) as err:
        execute(backend, planned)
    assert err.value.rolled_back is True  # read back: vSphere applied nothing of it
    sim.reconnect_host(ESX03)
    vm = vm_obj(connect(sim), "infer01")
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False


def test_release_of_a_vgpu_added_by_other_tools_leaves_the_reservation(backend, sim, connect):
    outcome = execute(backend, plan(backend, release("ml-vgpu", P40_B)))
    vm = vm_obj(connect(sim), "ml-vgpu")
    assert outcome.plan.steps and vgpus(vm) == []
    assert vm.config.memoryReservationLockedToMax is True  # nothing of gpupass' to restore


def test_the_undo_of_a_vgpu_step_restores_the_vm(sim, backend, connect):
    (step,) = plan(backend, assign(HOSTILE)).steps
    token = backend.apply(step)
    vm = vm_obj(connect(sim), HOSTILE)
    assert vgpus(vm) == ["grid_p40-4c"]
    assert backend.observe(step).state == "after"
    backend.undo(step, token)
    assert vgpus(vm) == [] and vm.config.memoryReservationLockedToMax is False
    assert vm.config.memoryAllocation.reservation == 1024 and RECORD not in {o.key for o in vm.config.extraConfig}


def test_cli_check_plan_assign_release_and_json(sim, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, GPUPASS_PASSWORD=sim.password, GPUPASS_CONFIG=str(tmp_path / "none.toml"))
    uri = f"esxi://gpupass@127.0.0.1:{sim.port}/Lab"

    def cli(*args, expect=0):
        done = subprocess.run([sys.executable, "-m", "gpupass.core.cli", *args, "--ca-file", str(sim.ca_file)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == expect, done.stderr + done.stdout
        return done

    gpu = f"{ESX03}/{P40_B}"
    checked = json.loads(cli("check", uri, "infer01", gpu, "--share", "P40-4C", "--json").stdout)
    assert "esxi-vgpu-placement" in {f["code"] for f in checked["findings"]}
    cli("plan", uri, "infer01", gpu, "--share", "grid_p40-4c")
    cli("assign", uri, "infer01", gpu, "--share", "grid_p40-4c", "--yes")
    listed = json.loads(cli("gpus", uri, "--json").stdout)
    second = next(g for g in listed["gpus"] if g["address"] == str(P40_B) and g.get("location") == ESX03)
    assert {s["holder"] for s in second["sharing"]["shares"]} >= {"infer01"}
    cli("release", uri, "infer01", gpu, "--yes")
    assert cli("check", uri, "vdi01", f"{ESX03}/{P40_A}", "--share", "grid_p40-4c", expect=3)
