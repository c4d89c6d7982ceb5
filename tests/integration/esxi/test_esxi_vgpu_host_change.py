"""A vGPU for a GPU in shared (vSGA) graphics mode: the plan says the host must switch it to shared direct, and with
--allow-host-sharing-change it does so first, as a step with an undo (backends/esxi/graphics.py), against the
simulator's esx03 with its second P40 set to shared."""

from __future__ import annotations

import pytest

from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core.domain.request import AssignmentRequest, AssignOptions
from gpupass.core.domain.select import GpuSelector
from gpupass.core.errors import OperationFailed, PreflightFailed, UsageError
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan
from gpupass.core.testing import InjectedFailure

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_vgpu_backend import ESX03, P40_B, backend_for  # noqa: E402

B = str(P40_B)


@pytest.fixture
def backend(fresh_vcsim):
    cfg = lab_config()
    next(g for g in cfg["hosts"][2]["gpus"] if g["address"] == B)["graphics_type"] = "shared"
    opened = backend_for(fresh_vcsim(cfg))
    yield opened
    opened.close()


def request(allow: bool) -> AssignmentRequest:
    return AssignmentRequest("infer01", (GpuSelector(f"{ESX03}/{B}"),),
                             AssignOptions(share="P40-4C", allow_host_sharing_change=allow))


def gpu(facts):
    return next(g for g in facts.gpus if g.location == ESX03 and g.address == P40_B)


def test_the_gpu_lists_the_profiles_it_offers_once_switched_and_says_so(backend):
    sharing = gpu(backend.inventory()).sharing
    assert "graphics type is shared" in sharing.host_change and "sharedDirect" in sharing.host_change
    four = sharing.type_named("grid_p40-4c")
    assert (four.available, four.max_instances) == (6, 6)  # nothing runs on it


def test_without_the_flag_the_plan_is_blocked_and_says_what_the_host_needs(backend):
    plan = make_plan(backend, backend.inventory(), request(False), default_registry())
    blocker = next(f for f in plan.findings if f.blocks)
    assert blocker.code == "share-host-change-needed" and "--allow-host-sharing-change" in blocker.remedy
    with pytest.raises(PreflightFailed):
        execute(backend, plan)
    assert gpu(backend.inventory()).sharing.host_change  # nothing changed


def test_with_the_flag_the_host_is_switched_first_then_the_vgpu_given(backend):
    plan = make_plan(backend, backend.inventory(), request(True), default_registry())
    assert not plan.blocked and "share-host-change" in {f.code for f in plan.findings}
    assert [s.action for s in plan.steps] == ["esxi.intent", "esxi.graphics", "esxi.vgpu"]
    assert f"deviceType {B} = sharedDirect" in plan.steps[1].changes
    execute(backend, plan)
    facts = backend.inventory()
    after = gpu(facts).sharing
    # ml-vgpu (off) is shown there too now: the first shared-direct P40 running no other profile
    assert not after.host_change and sorted(s.holder for s in after.shares) == ["infer01", "ml-vgpu"]
    assert facts.host.settings["hosts"][ESX03]["graphics"]["active_types"][B] == "sharedDirect"


def test_a_failed_vgpu_step_switches_the_host_back(backend):
    before = backend.inventory().host.settings["hosts"][ESX03]["graphics"]
    plan = make_plan(backend, backend.inventory(), request(True), default_registry())
    real_apply = backend.apply

    def apply(step):
        if step.action == "esxi.vgpu":
            raise InjectedFailure("the vGPU step fails")
        return real_apply(step)

    backend.apply = apply
    with pytest.raises(OperationFailed) as err:
        execute(backend, plan)
    del backend.apply
    assert err.value.rolled_back is True and "2 completed step(s) were undone" in err.value.message
    facts = backend.inventory()
    assert facts.host.settings["hosts"][ESX03]["graphics"] == before
    assert facts.find_vm("infer01").unfinished == ()  # the intent record was taken back too


def test_the_flag_without_a_share_is_a_usage_error():
    with pytest.raises(UsageError, match="applies to a share"):
        AssignOptions(allow_host_sharing_change=True)



@pytest.mark.parametrize("call", ["UpdateGraphicsConfig", "RestartService"])
def test_a_client_killed_in_the_host_graphics_step_is_shown_by_status_and_a_rerun_finishes(fresh_vcsim, call):
    """A real `gpupass assign --share --allow-host-sharing-change` killed (SIGKILL) with the host step's
    UpdateGraphicsConfig (or its Xorg restart) on the wire, carried out after: the host's graphics changed, the VM
    without its vGPU -- and the run's intent record, written before the host step, makes `status` say so; the same
    assign again finishes (restarting Xorg where the configuration is not in effect yet) and clears the record."""
    import json
    import os
    import subprocess

    from gpupass.backends.esxi.lab.simulator import lab_config
    from support.cli import GPUPASS, killed_with_call_held

    cfg = lab_config()
    next(g for g in cfg["hosts"][2]["gpus"] if g["address"] == B)["graphics_type"] = "shared"
    sim = fresh_vcsim(cfg)
    uri = f"esxi://gpupass@127.0.0.1:{sim.port}/Lab"
    env = {**os.environ, "GPUPASS_PASSWORD": sim.password}
    assign = ["assign", uri, "infer01", f"{ESX03}/{B}", "--share", "P40-4C", "--allow-host-sharing-change", "--yes"]
    killed_with_call_held(sim, call, assign, env)

    def gpupass(*args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    def infer01():
        status = gpupass("status", uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "infer01")

    vm = infer01()
    assert len(vm["unfinished"]) == 1 and "a vGPU assign of" in vm["unfinished"][0], vm
    assert "run the same `gpupass assign --share` again" in vm["unfinished"][0]
    again = gpupass(*assign, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    steps = [s["action"] for s in json.loads(again.stdout)["plan"]["steps"]]
    assert steps == (["esxi.intent", "esxi.graphics", "esxi.vgpu"] if call == "UpdateGraphicsConfig"
                     else ["esxi.vgpu"]), steps
    assert infer01()["unfinished"] == []
    facts = gpupass("gpus", uri, "--json")
    p40 = next(g for g in json.loads(facts.stdout)["gpus"] if g["location"] == ESX03 and g["address"] == B)
    assert p40["sharing"]["host_change"] is None and "infer01" in [s["holder"] for s in p40["sharing"]["shares"]]
