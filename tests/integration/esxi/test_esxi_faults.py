"""Faults around an ESXi assign: the vSphere endpoint frozen (SIGSTOP) just before gpupass's first write, then
thawed. gpupass gives up after the host's timeout, cannot read the VM back either, and says the outcome is
not known (never an assumed rollback); the thawed endpoint carries out the request that was waiting (the
change and its claim, one ReconfigVM_Task), which `status` then shows as done, and the same assign run again
converges."""

from __future__ import annotations

import os

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402


def test_an_endpoint_frozen_mid_assign_is_reported_as_unknown_and_a_rerun_converges(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend
    from support.esxi_faults import frozen_before_its_write

    sim = fresh_vcsim(username=USER)
    with EsxiBackend(target(sim)) as again:
        # The thawed endpoint serves the waiting request when it gets to it: the whole change, claim included,
        # since the change and the claim are one ReconfigVM_Task; so the VM is "after", not half-way.
        frozen_before_its_write(sim, target(sim), AssignmentRequest("ml-train", (A100_ACTIVE,)),
                                lambda: A100_ACTIVE in again.inventory().find_vm("ml-train").assigned)
        vm = again.inventory().find_vm("ml-train")
        assert vm.assigned == (A100_ACTIVE,) and vm.unfinished == ()
        rerun = plan(again, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        assert rerun.steps == ()  # the same assign again converges: nothing left to do
        execute(again, rerun)
        vm = again.inventory().find_vm("ml-train")
        assert vm.assigned == (A100_ACTIVE,) and vm.unfinished == ()


# -- a reply lost after the host carried the call out (vcsim's /gpupass/drop-reply) ----------------------------------
def _passthrough(backend):
    return [g.passthrough for g in backend.inventory().gpus]


def test_a_lost_reply_to_the_passthrough_switch_is_read_back_and_undone_and_a_rerun_converges(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend
    from tests.integration.esxi.test_esxi_host_rules import T4

    sim = fresh_vcsim(username=USER)
    backend = EsxiBackend(target(sim))
    try:
        before = backend.inventory()
        result = plan(backend, AssignmentRequest("cad-ws", (T4,)))
        assert [s.action for s in result.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"]
        sim.drop_reply("UpdatePassthruConfig")
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
        # the host had switched the device: gpupass read that back and switched it back, intent included
        assert caught.value.rolled_back is True, caught.value.message
        after = backend.inventory()
        assert after.find_vm("cad-ws") == before.find_vm("cad-ws")
        assert [g.passthrough for g in after.gpus] == [g.passthrough for g in before.gpus]
        execute(backend, plan(backend, AssignmentRequest("cad-ws", (T4,))))           # the same assign again
        assert T4 in backend.inventory().find_vm("cad-ws").assigned
    finally:
        backend.close()


def test_a_client_killed_with_the_passthrough_switch_on_the_wire_is_shown_by_status_and_a_rerun_converges(
        fresh_vcsim):
    """A real `gpupass assign` process killed (SIGKILL) while its host step (UpdatePassthruConfig) waits at the
    simulator; the simulator then carries the call out. The VM is as it was, the host switched: `status` shows the
    intent the run recorded before its host step, and the same assign run again finishes it."""
    import json
    import subprocess

    from support.cli import GPUPASS, killed_with_call_held
    from tests.integration.esxi.test_esxi_host_rules import T4

    sim = fresh_vcsim(username=USER)
    uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab"
    env = {**os.environ, "GPUPASS_PASSWORD": sim.password}

    def gpupass(*args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    killed_with_call_held(sim, "UpdatePassthruConfig", ["assign", uri, "cad-ws", str(T4), "--yes"], env)
    status = gpupass("status", uri, "--json")
    vm = next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "cad-ws")
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert "run the same `gpupass assign` again" in vm["unfinished"][0]
    again = gpupass("assign", uri, "cad-ws", str(T4), "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    vm = next(v for v in json.loads(gpupass("status", uri, "--json").stdout)["vms"] if v["name"] == "cad-ws")
    assert str(T4) in vm["assigned"] and vm["unfinished"] == []


def test_a_backend_reused_after_a_run_that_failed_past_its_intent_plans_and_applies_the_next_run(fresh_vcsim):
    """The Python API (gpupass.open_host) may keep one EsxiBackend for several runs. A run that wrote its intent
    record and then failed (its passthrough switch's reply lost, so undone) must not leave its record's
    changeVersion behind for the next run of that VM: a release planned afterwards on the same object is applied,
    not refused as "changed by someone else since the plan"."""
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.core.domain.request import ReleaseRequest
    from tests.integration.esxi.test_esxi_backend import H100
    from tests.integration.esxi.test_esxi_host_rules import T4

    sim = fresh_vcsim(username=USER)
    with EsxiBackend(target(sim)) as backend:
        failing = plan(backend, AssignmentRequest("cad-ws", (T4,)))
        assert [s.action for s in failing.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"]
        sim.drop_reply("UpdatePassthruConfig")
        with pytest.raises(OperationFailed) as caught:
            execute(backend, failing)
        assert caught.value.rolled_back is True, caught.value.message
        assert H100 in backend.inventory().find_vm("cad-ws").assigned
        execute(backend, plan(backend, ReleaseRequest("cad-ws", (H100,))))   # the same object, the next run
        assert H100 not in backend.inventory().find_vm("cad-ws").assigned
