"""A lost reply on each ESXi vGPU share write (vcsim's `/gpupass/drop-reply`): the ReconfigVM_Task that gives a VM a
vGPU, and the one that takes it back, carried out by the simulator and their answer dropped. gpupass reads the VM
back, finds the write applied, takes it back (the inverse ConfigSpec: the vGPU, the reservation, gpupass's record) and
says so; the VM is exactly as before, and the same command run again converges."""

from __future__ import annotations

import pytest

from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

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
