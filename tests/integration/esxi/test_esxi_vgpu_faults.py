"""A lost reply on each ESXi vGPU share write (vcsim's `/gpupass/drop-reply`): the ReconfigVM_Task that gives a VM a
vGPU, and the one that takes it back, carried out by the simulator and their answer dropped. gpupass reads the VM
back, finds the write applied, takes it back (the inverse ConfigSpec: the vGPU, the reservation, gpupass's record) and
says so; the VM is exactly as before, and the same command run again converges."""

from __future__ import annotations

import pytest

from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from support.esxi_faults import frozen_before_its_write  # noqa: E402
from tests.integration.esxi.test_esxi_vgpu_assign import (RECORD, assign, backend_for, plan, release,  # noqa: E402
                                                           vgpus, vm_obj)


@pytest.fixture
def sim(fresh_vcsim):
    return fresh_vcsim()


@pytest.fixture
def backend(sim):
    b = backend_for(sim)
    yield b
    b.close()


def _settings(vm):
    return (vgpus(vm), vm.config.memoryReservationLockedToMax, vm.config.memoryAllocation.reservation,
            sorted((o.key, o.value) for o in vm.config.extraConfig if o.key == RECORD))


def test_a_lost_reply_to_a_vgpu_assign_is_read_back_and_taken_back_and_a_rerun_converges(sim, backend, connect):
    vm = vm_obj(connect(sim), "infer01")
    before = _settings(vm)
    sim.drop_reply("ReconfigVM_Task")
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan(backend, assign("infer01")))
    assert caught.value.rolled_back is True, caught.value.message
    assert "what vSphere had applied of it was taken back" in caught.value.message
    assert _settings(vm) == before
    execute(backend, plan(backend, assign("infer01")))                  # the same assign again
    assert vgpus(vm) == ["grid_p40-4c"] and vm.config.memoryReservationLockedToMax is True


def test_a_lost_reply_to_a_vgpu_release_is_read_back_and_taken_back_and_a_rerun_converges(sim, backend, connect):
    vm = vm_obj(connect(sim), "infer01")
    original = _settings(vm)
    execute(backend, plan(backend, assign("infer01")))
    held = _settings(vm)
    assert held[0] == ["grid_p40-4c"] and held[3], held                 # the vGPU and gpupass's record
    sim.drop_reply("ReconfigVM_Task")
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan(backend, release("infer01")))
    assert caught.value.rolled_back is True, caught.value.message
    assert _settings(vm) == held                                        # vGPU, reservation and record back
    execute(backend, plan(backend, release("infer01")))                 # the same release again
    assert _settings(vm) == original


def test_a_client_killed_with_its_vgpu_assign_on_the_wire_leaves_the_vm_after_and_a_rerun_converges(sim, connect,
                                                                                                     tmp_path):
    """A real `gpupass assign --share` process killed (SIGKILL) while its ReconfigVM_Task waits at the simulator
    (vcsim's `/gpupass/hold`), which then carries it out: the vGPU, the reservation and gpupass's record arrive
    together (one reconfigure), so the VM is exactly after; `gpus` shows the share, the same assign again has nothing
    to do, and a release gives everything back."""
    import json
    import os
    import subprocess

    from support.cli import GPUPASS, killed_with_call_held

    vm = vm_obj(connect(sim), "infer01")
    before = _settings(vm)
    env = dict(os.environ, GPUPASS_PASSWORD=sim.password, GPUPASS_CONFIG=str(tmp_path / "none.toml"))
    uri, gpu = f"esxi://gpupass@127.0.0.1:{sim.port}/Lab", "esx03.lab.local/0000:af:00.0"

    def cli(*args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    killed_with_call_held(sim, "ReconfigVM_Task", ["assign", uri, "infer01", gpu, "--share", "grid_p40-4c", "--yes"],
                          env)
    held = _settings(vm)
    assert held[0] == ["grid_p40-4c"] and held[1] is True and held[3], held          # exactly after, record included
    listed = json.loads(cli("gpus", uri, "--json").stdout)
    card = next(g for g in listed["gpus"] if g["address"] == "0000:af:00.0" and g.get("location") == "esx03.lab.local")
    assert "infer01" in {s["holder"] for s in card["sharing"]["shares"]}
    again = cli("assign", uri, "infer01", gpu, "--share", "grid_p40-4c", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stdout + again.stderr
    released = cli("release", uri, "infer01", gpu, "--yes")
    assert released.returncode == 0, released.stdout + released.stderr
    assert _settings(vm) == before


def test_a_client_killed_with_its_vgpu_release_on_the_wire_leaves_the_vm_released_and_a_rerun_converges(
        sim, backend, connect, tmp_path):
    """A real `gpupass release` of a vGPU share killed (SIGKILL) while its ReconfigVM_Task waits at the simulator,
    which then carries it out: the vGPU, the reservation gpupass locked and its record leave together (one
    reconfigure), so the VM is exactly as before the assign; `gpus` shows no share of it, `status` has nothing
    unfinished, and the same release again has nothing to do."""
    import json
    import os
    import subprocess

    from support.cli import GPUPASS, killed_with_call_held

    vm = vm_obj(connect(sim), "infer01")
    original = _settings(vm)
    execute(backend, plan(backend, assign("infer01")))
    assert _settings(vm)[0] == ["grid_p40-4c"]
    env = dict(os.environ, GPUPASS_PASSWORD=sim.password, GPUPASS_CONFIG=str(tmp_path / "none.toml"))
    uri, gpu = f"esxi://gpupass@127.0.0.1:{sim.port}/Lab", "esx03.lab.local/0000:af:00.0"

    def cli(*args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    killed_with_call_held(sim, "ReconfigVM_Task", ["release", uri, "infer01", gpu, "--yes"], env)
    assert _settings(vm) == original                                    # exactly released, record included
    listed = json.loads(cli("gpus", uri, "--json").stdout)
    card = next(g for g in listed["gpus"] if g["address"] == "0000:af:00.0" and g.get("location") == "esx03.lab.local")
    assert "infer01" not in {s["holder"] for s in card["sharing"]["shares"]}
    status = json.loads(cli("status", uri, "--json").stdout)
    assert next(v for v in status["vms"] if v["name"] == "infer01")["unfinished"] == []
    again = cli("release", uri, "infer01", gpu, "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stdout + again.stderr
    assert _settings(vm) == original


def test_an_endpoint_frozen_mid_vgpu_assign_is_reported_as_unknown_and_a_rerun_converges(sim, connect):
    """Frozen (SIGSTOP) with the vGPU's ReconfigVM_Task about to go: gpupass gives up after the host's timeout, cannot
    read the VM back either and says the outcome is not known (never "rolled back"); the thawed endpoint carries out
    the waiting request -- the vGPU, the reservation and gpupass's record at once -- and the same assign again has
    nothing to do."""

    vm = vm_obj(connect(sim), "infer01")
    base = backend_for(sim)
    base.close()
    frozen_before_its_write(sim, base.target, assign("infer01"), lambda: bool(vgpus(vm)))
    held = _settings(vm)
    assert held[0] == ["grid_p40-4c"] and held[1] is True and held[3], held         # exactly after, record included
    with backend_for(sim) as again:
        rerun = plan(again, assign("infer01"))
        assert rerun.steps == ()
    assert _settings(vm) == held


def test_an_endpoint_frozen_mid_vgpu_release_is_reported_as_unknown_and_a_rerun_converges(sim, backend, connect):
    """Frozen with the vGPU release's ReconfigVM_Task about to go: reported not known (never "rolled back"); the
    thawed endpoint removes the vGPU, restores the reservation and removes gpupass's record at once, and the same
    release again has nothing to do."""

    vm = vm_obj(connect(sim), "infer01")
    original = _settings(vm)
    execute(backend, plan(backend, assign("infer01")))
    assert _settings(vm)[0] == ["grid_p40-4c"]
    frozen_before_its_write(sim, backend.target, release("infer01"), lambda: not vgpus(vm))
    assert _settings(vm) == original                                    # exactly released, record included
    with backend_for(sim) as again:
        assert plan(again, release("infer01")).steps == ()

