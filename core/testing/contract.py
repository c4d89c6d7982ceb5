"""What every backend must do, whatever the platform: pytest tests over a `backend_env` fixture (a BackendEnv).

Import everything from this module into a test module and define `backend_env` there or in a conftest.py
(see gpupass.core.testing). Each test gets a fresh `backend` opened from the environment.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from gpupass.core.domain.inventory import Gpu, HostFacts, PowerState, Vm
from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.core.domain.plan import Plan, Step
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.errors import NotFound
from gpupass.core.ports import Backend
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan


@pytest.fixture
def backend(backend_env) -> Iterator[Backend]:
    opened = backend_env.open()
    try:
        yield opened
    finally:
        opened.close()


def plan(backend, request) -> Plan:
    return make_plan(backend, backend.inventory(), request, default_registry())


def assign_request(env) -> AssignmentRequest:
    return AssignmentRequest(env.off_vm, (env.free_gpu,))


def gpu_at(facts: HostFacts, address: PciAddress) -> Gpu:
    return next(gpu for gpu in facts.gpus if gpu.address == address)


def blocker_codes(result: Plan) -> set[str]:
    return {finding.code for finding in result.findings if finding.blocks}


def test_the_backend_is_registered_for_its_platform(backend_env, backend):
    registry = default_registry()
    registered = registry.backend_for(backend.target.scheme)
    assert registered in registry.backends
    assert backend.platform == backend_env.platform
    # A lab may open its target with a subclass of the registered backend (LabHost.open): the KVM lab does.
    assert type(backend) is registered or type(backend).__bases__ == (registered,)


def test_inventory_shape(backend_env, backend):
    facts = backend.inventory()
    assert isinstance(facts, HostFacts)
    assert facts.host.platform == backend.platform and facts.host.uri
    assert all(isinstance(gpu, Gpu) and isinstance(gpu.address, PciAddress) for gpu in facts.gpus)
    assert all(isinstance(vm, Vm) for vm in facts.vms)
    assert len({vm.name for vm in facts.vms}) == len(facts.vms), "VM names must be unique per location"
    assert [(g.location, g.address) for g in facts.gpus] == sorted((g.location, g.address) for g in facts.gpus)
    for gpu in facts.gpus:
        assert gpu.function.is_gpu
        assert all(isinstance(f, PciFunction) for f in gpu.functions)
        assert all(f.address.device == gpu.address.device for f in gpu.companions)
        # Every function the backend saw is in the table rules read (bars may differ: GPUs get catalog BARs).
        for function in gpu.functions:
            seen = facts.function(function.address, gpu.location)
            assert seen is not None and seen.class_code == function.class_code
        if gpu.assigned_to is not None:
            owner = facts.find_vm(gpu.assigned_to)
            assert owner is not None and gpu.address in owner.assigned
    assert gpu_at(facts, backend_env.free_gpu).assigned_to is None
    assert gpu_at(facts, backend_env.owned_gpu).assigned_to == backend_env.owner_vm
    assert facts.find_vm(backend_env.off_vm).power_state is PowerState.OFF
    assert facts.find_vm(backend_env.running_vm).power_state is PowerState.RUNNING
    assert backend_env.free_gpu not in facts.find_vm(backend_env.off_vm).assigned


def test_plan_for_a_free_gpu_to_an_off_vm_writes_and_is_not_blocked(backend_env, backend):
    result = plan(backend, assign_request(backend_env))
    assert not result.blocked, [f for f in result.findings if f.blocks]
    assert not result.nothing_to_do
    assert all(isinstance(step, Step) for step in result.steps)
    assert any(step.writes for step in result.steps)
    assert all(step.description and step.undo for step in result.steps)
    assert result.vm == backend_env.off_vm and [g.address for g in result.gpus] == [backend_env.free_gpu]
    assert result.platform == backend.platform


def test_assign_then_inventory_shows_the_owner_even_on_a_new_connection(backend_env, backend):
    outcome = execute(backend, plan(backend, assign_request(backend_env)))
    assert gpu_at(outcome.facts_after, backend_env.free_gpu).assigned_to == backend_env.off_vm
    assert backend_env.free_gpu in outcome.facts_after.find_vm(backend_env.off_vm).assigned
    fresh = backend_env.open()
    try:
        assert gpu_at(fresh.inventory(), backend_env.free_gpu).assigned_to == backend_env.off_vm
    finally:
        fresh.close()


def test_second_assign_is_a_no_op(backend_env, backend):
    execute(backend, plan(backend, assign_request(backend_env)))
    again = plan(backend, assign_request(backend_env))
    assert again.nothing_to_do and not again.blocked
    before = backend.inventory()
    assert execute(backend, again).applied == ()
    assert backend.inventory() == before


def test_release_restores_the_vm(backend_env, backend):
    before = backend.inventory().find_vm(backend_env.off_vm)
    execute(backend, plan(backend, assign_request(backend_env)))
    release = plan(backend, ReleaseRequest(backend_env.off_vm))
    assert [g.address for g in release.gpus] == [backend_env.free_gpu]
    assert not release.blocked and any(step.writes for step in release.steps)
    outcome = execute(backend, release)
    assert outcome.facts_after.find_vm(backend_env.off_vm) == before
    assert gpu_at(outcome.facts_after, backend_env.free_gpu).assigned_to is None
    assert plan(backend, ReleaseRequest(backend_env.off_vm)).nothing_to_do


def test_a_running_vm_is_blocked_with_vm_not_off(backend_env, backend):
    result = plan(backend, AssignmentRequest(backend_env.running_vm, (backend_env.free_gpu,)))
    assert "vm-not-off" in blocker_codes(result)


def test_a_gpu_of_another_vm_is_blocked_with_gpu_assigned_elsewhere(backend_env, backend):
    result = plan(backend, AssignmentRequest(backend_env.off_vm, (backend_env.owned_gpu,)))
    assert "gpu-assigned-elsewhere" in blocker_codes(result)


def test_an_unknown_vm_is_not_found(backend_env, backend):
    with pytest.raises(NotFound):
        plan(backend, AssignmentRequest("no-such-vm-" + backend_env.off_vm, (backend_env.free_gpu,)))


def test_round_trips_are_counted(backend_env, backend):
    assert backend.round_trips == 0
    backend.inventory()
    after_inventory = backend.round_trips
    assert after_inventory > 0
    execute(backend, plan(backend, assign_request(backend_env)))
    assert backend.round_trips > 2 * after_inventory  # a second inventory, the write, the final read


def test_read_back_reports_the_vm_as_the_inventory_does_for_less(backend_env, backend):
    execute(backend, plan(backend, assign_request(backend_env)))
    began = backend.round_trips
    vm = backend.read_back(backend_env.off_vm, (backend_env.free_gpu,))
    read_back_cost = backend.round_trips - began
    assert vm is not None and backend_env.free_gpu in vm.assigned
    began = backend.round_trips
    assert vm == backend.inventory().find_vm(backend_env.off_vm)
    assert 1 <= read_back_cost <= backend.round_trips - began
    assert backend.read_back("no-such-vm-" + backend_env.off_vm, ()) is None


def _steps(result: Plan) -> list[tuple]:
    return [(s.action, s.description, s.changes, s.preview, s.writes, s.needs_vm_off, s.needs_host_reboot, s.payload)
            for s in result.steps]


def test_a_snapshot_plans_exactly_like_the_live_host(backend_env, backend, tmp_path):
    """`gpupass snapshot HOST -o FILE`, then FILE as HOST: the planner works from what inventory() returned."""
    from gpupass.core import snapshot
    from gpupass.core.hosts import open_snapshot

    registry = default_registry()
    facts = backend.inventory()
    path = tmp_path / "host.json"
    snapshot.write(path, facts, type(backend).state_to_json(facts.state), backend.target.label)
    offline = open_snapshot(path, registry)
    assert offline.read_only and offline.platform == backend.platform
    recorded = offline.inventory()
    assert recorded.state == facts.state, "the backend's planning state must survive the snapshot"
    assert {vm.name for vm in recorded.vms} == {vm.name for vm in facts.vms}
    live = make_plan(backend, facts, assign_request(backend_env), registry)
    planned = make_plan(offline, recorded, assign_request(backend_env), registry)
    assert _steps(live)
    assert _steps(planned) == _steps(live), [a for a, b in zip(_steps(planned), _steps(live), strict=False) if a != b]
    assert [f.code for f in planned.findings] == [f.code for f in live.findings]
    release = ReleaseRequest(backend_env.owner_vm)
    assert [s.action for s in make_plan(offline, recorded, release, registry).steps] == \
        [s.action for s in make_plan(backend, facts, release, registry).steps]
