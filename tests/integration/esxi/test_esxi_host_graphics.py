"""Switching an ESXi host's graphics configuration (backends/esxi/graphics.py): a planned host step with an undo, real
pyvmomi against the simulator's shared-direct host esx03 (vcsim/vgpu.go: configured at once, in effect after Xorg
restarts, refused for a GPU running vGPU VMs)."""

from __future__ import annotations

import pytest

from gpupass.core.errors import OperationFailed, PreflightFailed, UsageError
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

from tests.integration.esxi.test_esxi_vgpu_backend import ESX03, P40_A, P40_B, backend_for  # noqa: E402

A, B = str(P40_A), str(P40_B)


@pytest.fixture
def sim(fresh_vcsim):
    return fresh_vcsim()


@pytest.fixture
def backend(sim):
    opened = backend_for(sim)
    yield opened
    opened.close()


def graphics(backend):
    return backend.inventory().host.settings["hosts"][ESX03]["graphics"]


def host_obj(si):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.HostSystem], True)
    try:
        return next(h for h in view.view if h.name == ESX03)
    finally:
        view.Destroy()


def test_switching_the_idle_gpu_to_shared_takes_effect_and_withdraws_its_profiles(backend):
    plan = backend.ex_plan_host_graphics(backend.inventory(), ESX03, assignment_policy="consolidation",
                                         device_types={B: "shared"})
    (step,) = plan.steps
    assert step.action == "esxi.graphics" and "RestartService xorg" in step.changes
    assert "deviceType 0000:af:00.0 = shared" in step.changes and not plan.blocked
    assert [f.code for f in plan.findings] == ["esxi-graphics-xorg-restart"]
    outcome = execute(backend, plan)
    assert outcome.applied == (step,)
    after = graphics(backend)
    assert (after["assignment_policy"], after["device_types"]) == ("consolidation", {B: "shared"})
    # in effect: Xorg was restarted (the host's own SVGA device has no host driver: basic)
    assert after["active_types"] == {"0000:00:0f.0": "basic", A: "sharedDirect", B: "shared"}
    facts = backend.inventory()
    shared = next(g for g in facts.gpus if g.location == ESX03 and g.address == P40_B)
    # a GPU in shared (vSGA) mode gives no vGPU: its profiles are those of the other P40, once it is switched back
    assert shared.sharing.host_change and not shared.sharing.shares
    # the same request again has nothing to do; dropping the override plans the way back
    assert backend.ex_plan_host_graphics(facts, ESX03, assignment_policy="consolidation",
                                         device_types={B: "shared"}).steps == ()
    execute(backend, backend.ex_plan_host_graphics(facts, ESX03, assignment_policy="performance",
                                                   device_types={B: None}))
    assert graphics(backend)["active_types"] == {"0000:00:0f.0": "basic", A: "sharedDirect", B: "sharedDirect"}


def test_a_gpu_running_vgpus_is_blocked_as_the_host_refuses_it(backend):
    facts = backend.inventory()  # vdi01 runs a grid_p40-2b on the first P40
    plan = backend.ex_plan_host_graphics(facts, ESX03, default_type="shared")
    assert plan.blocked
    blocker = next(f for f in plan.findings if f.blocks)
    assert blocker.code == "esxi-graphics-in-use" and blocker.subject == A and "runs 1 vGPU VM(s)" in blocker.message
    with pytest.raises(PreflightFailed):
        execute(backend, plan)
    # the step sent anyway is refused by the host (HostConfigFault), and nothing of it stays
    with pytest.raises(OperationFailed) as err:
        backend.apply(plan.steps[0])
    assert err.value.rolled_back is not False
    assert graphics(backend) == facts.host.settings["hosts"][ESX03]["graphics"]


def test_a_lost_reply_to_the_xorg_restart_is_set_back(sim, backend):
    before = graphics(backend)
    plan = backend.ex_plan_host_graphics(backend.inventory(), ESX03, device_types={B: "shared"})
    sim.drop_reply("RestartService")  # carried out, the answer never comes
    with pytest.raises(OperationFailed) as err:
        execute(backend, plan)
    assert err.value.rolled_back is True and "was set back" in err.value.message
    assert graphics(backend) == before  # configured and in effect as they were


def test_configured_is_not_in_effect_until_xorg_restarts_and_a_plan_finishes_it(backend, connect, sim):
    si = connect(sim)
    host = host_obj(si)
    host.configManager.graphicsManager.UpdateGraphicsConfig(vim.host.GraphicsConfig(
        hostDefaultGraphicsType="sharedDirect", sharedPassthruAssignmentPolicy="performance",
        deviceType=[vim.host.GraphicsConfig.DeviceType(deviceId=B, graphicsType="shared")]))
    now = graphics(backend)
    assert now["device_types"] == {B: "shared"} and now["active_types"][B] == "sharedDirect"
    # the same configuration, not in effect yet: the plan restarts Xorg
    (step,) = backend.ex_plan_host_graphics(backend.inventory(), ESX03, device_types={B: "shared"}).steps
    backend.apply(step)
    assert graphics(backend)["active_types"][B] == "shared"


def test_undo_sets_the_configuration_found_back(backend):
    before = graphics(backend)
    (step,) = backend.ex_plan_host_graphics(backend.inventory(), ESX03, assignment_policy="consolidation").steps
    token = backend.apply(step)
    assert graphics(backend)["assignment_policy"] == "consolidation"
    backend.undo(step, token)
    assert graphics(backend) == before


@pytest.mark.parametrize("kwargs, problem", [
    ({"default_type": "direct"}, "default graphics type 'direct' is not one of shared, sharedDirect"),
    ({"assignment_policy": "fastest"}, "assignment policy 'fastest' is not one of performance, consolidation"),
    ({"device_types": {"0000:99:00.0": "shared"}}, "0000:99:00.0 is not a graphics device of this host"),
])
def test_bad_values_are_refused_before_anything_is_sent(backend, kwargs, problem):
    facts = backend.inventory()
    sent = backend.round_trips
    with pytest.raises(UsageError) as err:
        backend.ex_plan_host_graphics(facts, ESX03, **kwargs)
    assert problem in err.value.message and backend.round_trips == sent


def test_power_on_after_the_switch_places_by_the_policy_in_effect(backend, connect, sim):
    execute(backend, backend.ex_plan_host_graphics(backend.inventory(), ESX03, assignment_policy="consolidation"))
    si = connect(sim)
    vm = next(v for v in si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine],
                                                                     True).view if v.name == "infer01")
    spec = vim.vm.ConfigSpec(memoryReservationLockedToMax=True, deviceChange=[vim.vm.device.VirtualDeviceSpec(
        operation="add", device=vim.vm.device.VirtualPCIPassthrough(
            key=-1, backing=vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo(vgpu="grid_p40-2b")))])
    WaitForTask(vm.ReconfigVM_Task(spec))
    WaitForTask(vm.PowerOnVM_Task())
    # consolidation: onto the P40 that already runs vdi01's 2B (performance would pick the empty one)
    running = graphics(backend)["running_vgpus"]
    assert running == {A: 2}


def test_a_lost_reply_to_the_graphics_configuration_is_set_back(sim, backend):
    """vSphere took the new configuration, the answer never came: gpupass reads it back, finds it changed and sets the
    one it found back (and restarts Xorg so that is in effect): exactly as before; the same plan again converges."""
    before = graphics(backend)
    plan = backend.ex_plan_host_graphics(backend.inventory(), ESX03, device_types={B: "shared"})
    sim.drop_reply("UpdateGraphicsConfig")
    with pytest.raises(OperationFailed) as err:
        execute(backend, plan)
    assert err.value.rolled_back is True and "was set back" in err.value.message, err.value.message
    assert graphics(backend) == before
    execute(backend, backend.ex_plan_host_graphics(backend.inventory(), ESX03, device_types={B: "shared"}))
    now = graphics(backend)
    assert now["device_types"] == {B: "shared"} and now["active_types"][B] == "shared"


def test_an_endpoint_frozen_before_the_graphics_configuration_is_reported_unknown_and_a_plan_finishes_it(sim):
    """Frozen with UpdateGraphicsConfig about to go: gpupass gives up, cannot read the host back, says so; the thawed
    host takes the configuration (not in effect: Xorg was not restarted); the same plan again restarts Xorg."""
    import dataclasses
    import time

    from gpupass.backends.esxi.backend import EsxiBackend
    from support.frozen_endpoint import freeze, thaw

    again = backend_for(sim)
    frozen = EsxiBackend(dataclasses.replace(again.target, timeout=1.0))
    plan_now = frozen.ex_plan_host_graphics(frozen.inventory(), ESX03, device_types={B: "shared"})

    def taken():
        return graphics(again)["device_types"] == {B: "shared"}

    original = frozen._call
    state = []

    def freeze_then_call(action, *args, **kwargs):
        if not state and str(action).startswith("changing the graphics configuration"):
            freeze(sim.pid)
            state.append(True)
        return original(action, *args, **kwargs)

    frozen._call = freeze_then_call
    try:
        with pytest.raises(OperationFailed) as err:
            execute(frozen, plan_now)
    finally:
        thaw(sim.pid)
    deadline = time.monotonic() + 10
    while not taken():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    frozen._drop_session()
    assert err.value.rolled_back is False and "not known" in err.value.message, err.value.message
    now = graphics(again)
    assert now["active_types"][B] != "shared"  # configured, not in effect
    execute(again, again.ex_plan_host_graphics(again.inventory(), ESX03, device_types={B: "shared"}))
    assert graphics(again)["active_types"][B] == "shared"
    again.close()
