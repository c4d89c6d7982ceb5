"""What every backend must do, whatever the platform: pytest tests over a `backend_env` fixture (a BackendEnv).

Import everything from this module into a test module and define `backend_env` there or in a conftest.py
(see gpupass.core.testing). Each test gets a fresh `backend` opened from the environment.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from gpupass.core.domain.inventory import Gpu, HostFacts, PowerState, Vm
from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.core.domain.plan import Plan, Step
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.domain.sharing import Share
from gpupass.core.errors import Conflict, ConnectionFailed, GpupassError, NotFound, NotSupported, OperationFailed
from gpupass.core.ports import Backend
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan
from gpupass.core.testing import HOSTILE_NAMES, BackendEnv, InjectedFailure


@pytest.fixture
def backend(backend_env: BackendEnv) -> Iterator[Backend]:
    opened = backend_env.open()
    try:
        yield opened
    finally:
        opened.close()


def plan(backend: Backend, request: AssignmentRequest | ReleaseRequest) -> Plan:
    return make_plan(backend, backend.inventory(), request, default_registry())


def assign_request(env: BackendEnv) -> AssignmentRequest:
    return AssignmentRequest(env.off_vm, (env.free_gpu,))


def gpu_at(facts: HostFacts, address: PciAddress) -> Gpu:
    return next(gpu for gpu in facts.gpus if gpu.address == address)


def vm_named(facts: HostFacts | None, name: str) -> Vm:
    assert facts is not None
    vm = facts.find_vm(name)
    assert vm is not None, f"no VM {name!r} on the host"
    return vm


def blocker_codes(result: Plan) -> set[str]:
    return {finding.code for finding in result.findings if finding.blocks}


def test_the_backend_is_registered_for_its_platform(backend_env: BackendEnv, backend: Backend) -> None:
    registry = default_registry()
    registered = registry.backend_for(backend.target.scheme)
    assert registered in registry.backends
    assert backend.platform == backend_env.platform
    # A lab may open its target with a subclass of the registered backend (LabHost.open): the KVM lab does.
    assert type(backend) is registered or type(backend).__bases__ == (registered,)


def test_inventory_shape(backend_env: BackendEnv, backend: Backend) -> None:
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
    assert vm_named(facts, backend_env.off_vm).power_state is PowerState.OFF
    assert vm_named(facts, backend_env.running_vm).power_state is PowerState.RUNNING
    assert backend_env.free_gpu not in vm_named(facts, backend_env.off_vm).assigned


def test_plan_for_a_free_gpu_to_an_off_vm_writes_and_is_not_blocked(backend_env: BackendEnv, backend: Backend) -> None:
    result = plan(backend, assign_request(backend_env))
    assert not result.blocked, [f for f in result.findings if f.blocks]
    assert not result.nothing_to_do
    assert all(isinstance(step, Step) for step in result.steps)
    assert any(step.writes for step in result.steps)
    assert all(step.description and step.undo for step in result.steps)
    assert result.vm == backend_env.off_vm and [g.address for g in result.gpus] == [backend_env.free_gpu]
    assert result.platform == backend.platform


def test_assign_then_inventory_shows_the_owner_even_on_a_new_connection(backend_env: BackendEnv, backend: Backend) -> None:
    outcome = execute(backend, plan(backend, assign_request(backend_env)))
    facts_after = outcome.facts_after
    assert facts_after is not None
    assert gpu_at(facts_after, backend_env.free_gpu).assigned_to == backend_env.off_vm
    assert backend_env.free_gpu in vm_named(facts_after, backend_env.off_vm).assigned
    fresh = backend_env.open()
    try:
        assert gpu_at(fresh.inventory(), backend_env.free_gpu).assigned_to == backend_env.off_vm
    finally:
        fresh.close()


def test_second_assign_is_a_no_op(backend_env: BackendEnv, backend: Backend) -> None:
    execute(backend, plan(backend, assign_request(backend_env)))
    again = plan(backend, assign_request(backend_env))
    assert again.nothing_to_do and not again.blocked
    before = backend.inventory()
    assert execute(backend, again).applied == ()
    assert backend.inventory() == before


def test_release_restores_the_vm(backend_env: BackendEnv, backend: Backend) -> None:
    before = backend.inventory().find_vm(backend_env.off_vm)
    execute(backend, plan(backend, assign_request(backend_env)))
    release = plan(backend, ReleaseRequest(backend_env.off_vm))
    assert [g.address for g in release.gpus] == [backend_env.free_gpu]
    assert not release.blocked and any(step.writes for step in release.steps)
    outcome = execute(backend, release)
    assert vm_named(outcome.facts_after, backend_env.off_vm) == before
    assert outcome.facts_after is not None and gpu_at(outcome.facts_after, backend_env.free_gpu).assigned_to is None
    assert plan(backend, ReleaseRequest(backend_env.off_vm)).nothing_to_do


def test_a_running_vm_is_blocked_with_vm_not_off(backend_env: BackendEnv, backend: Backend) -> None:
    result = plan(backend, AssignmentRequest(backend_env.running_vm, (backend_env.free_gpu,)))
    assert "vm-not-off" in blocker_codes(result)


def test_a_gpu_of_another_vm_is_blocked_with_gpu_assigned_elsewhere(backend_env: BackendEnv, backend: Backend) -> None:
    result = plan(backend, AssignmentRequest(backend_env.off_vm, (backend_env.owned_gpu,)))
    assert "gpu-assigned-elsewhere" in blocker_codes(result)


def test_an_unknown_vm_is_not_found(backend_env: BackendEnv, backend: Backend) -> None:
    with pytest.raises(NotFound):
        plan(backend, AssignmentRequest("no-such-vm-" + backend_env.off_vm, (backend_env.free_gpu,)))


def test_round_trips_are_counted(backend_env: BackendEnv, backend: Backend) -> None:
    assert backend.round_trips == 0
    backend.inventory()
    after_inventory = backend.round_trips
    assert after_inventory > 0
    execute(backend, plan(backend, assign_request(backend_env)))
    assert backend.round_trips > 2 * after_inventory  # a second inventory, the write, the final read


def test_read_back_reports_the_vm_as_the_inventory_does_for_less(backend_env: BackendEnv, backend: Backend) -> None:
    execute(backend, plan(backend, assign_request(backend_env)))
    began = backend.round_trips
    vm = backend.read_back(backend_env.off_vm, (backend_env.free_gpu,))
    read_back_cost = backend.round_trips - began
    assert vm is not None and backend_env.free_gpu in vm.assigned
    began = backend.round_trips
    assert vm == backend.inventory().find_vm(backend_env.off_vm)
    assert 1 <= read_back_cost <= backend.round_trips - began
    assert backend.read_back("no-such-vm-" + backend_env.off_vm, ()) is None


def _steps(result: Plan) -> list[tuple[object, ...]]:
    return [(s.action, s.description, s.changes, s.preview, s.writes, s.needs_vm_off, s.needs_host_reboot, s.payload)
            for s in result.steps]


def test_a_snapshot_plans_exactly_like_the_live_host(backend_env: BackendEnv, backend: Backend, tmp_path: Path) -> None:
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


# -- rollback on an injected failure -------------------------------------------------------------------------
def _neutral(facts: HostFacts) -> HostFacts:
    """What the host holds, as the core sees it: the facts without the backend's planning state (which may carry
    a platform's change counters, such as vSphere's changeVersion, that any write and its undo move on)."""
    return replace(facts, state=None)


def _read_host(env: BackendEnv) -> HostFacts:
    with env.open() as fresh:
        return _neutral(fresh.inventory())


def _failing_at(backend: Backend, index: int) -> None:
    """Make the backend's `index`-th apply (0: the first write) raise InjectedFailure instead of running."""
    real_apply, calls = backend.apply, [0]

    def apply(step: Step) -> Any:
        calls[0] += 1
        if calls[0] - 1 == index:
            raise InjectedFailure(f"the contract kit failed step {index + 1} ({step.action})")
        return real_apply(step)

    backend.apply = apply  # type: ignore[method-assign]  # the kit's one seam: an instance attribute


def _fails_at_each_step_and_rolls_back(env: BackendEnv, request: AssignmentRequest | ReleaseRequest) -> int:
    before = _read_host(env)
    with env.open() as probe:
        writes = [step for step in plan(probe, request).steps if step.writes]
    assert writes, "the plan must write"
    for index in range(len(writes)):
        with env.open() as backend:
            result = plan(backend, request)
            _failing_at(backend, index)
            with pytest.raises(OperationFailed) as caught:
                execute(backend, result)
        error = caught.value
        assert isinstance(error.__cause__, InjectedFailure), error
        assert error.rolled_back is True and error.exit_code == 1 and error.to_dict()["rolled_back"] is True, error
        after = _read_host(env)
        assert after == before, f"a failure at step {index + 1} of {len(writes)} ({writes[index].action}) left the " \
                                "host changed after the rollback"
    return len(writes)


def test_a_failure_at_any_step_of_an_assign_rolls_the_host_back_exactly(backend_env: BackendEnv) -> None:
    _fails_at_each_step_and_rolls_back(backend_env, assign_request(backend_env))


def test_a_failure_at_any_step_of_a_release_rolls_the_host_back_exactly(backend_env: BackendEnv,
                                                                        backend: Backend) -> None:
    execute(backend, plan(backend, assign_request(backend_env)))
    _fails_at_each_step_and_rolls_back(backend_env, ReleaseRequest(backend_env.off_vm))


# -- error translation ---------------------------------------------------------------------------------------
def _needs(value: object, what: str) -> None:
    if not value:
        pytest.skip(f"the environment does not give {what} (BackendEnv, gpupass.core.testing)")


def test_an_unreachable_host_is_connection_failed(backend_env: BackendEnv) -> None:
    _needs(backend_env.unreachable, "an unreachable host")
    assert backend_env.unreachable is not None
    with backend_env.unreachable() as unreachable:
        with pytest.raises(ConnectionFailed) as caught:
            unreachable.inventory()
    assert caught.value.exit_code == 1 and caught.value.to_dict()["error"] == "connection-failed"


def test_a_vm_removed_after_the_plan_is_not_found_and_nothing_is_left(backend_env: BackendEnv,
                                                                      backend: Backend) -> None:
    _needs(backend_env.remove_vm, "a way to remove a VM")
    assert backend_env.remove_vm is not None
    result = plan(backend, assign_request(backend_env))
    backend_env.remove_vm(backend_env.off_vm)
    before = _read_host(backend_env)
    with pytest.raises(GpupassError) as caught:
        execute(backend, result)
    error = caught.value
    chain = [error, *_causes(error)]
    assert any(isinstance(e, NotFound) for e in chain), f"the platform's 'no such VM' must arrive as NotFound: {chain}"
    assert error.exit_code in (NotFound.exit_code, OperationFailed.exit_code)
    assert backend_env.off_vm in error.message
    assert _read_host(backend_env) == before
    assert gpu_at(before, backend_env.free_gpu).assigned_to is None


def _causes(error: BaseException) -> list[BaseException]:
    found = []
    while error.__cause__ is not None:
        error = error.__cause__
        found.append(error)
    return found


def test_a_plan_made_before_another_assignment_of_the_gpu_loses_with_conflict(backend_env: BackendEnv,
                                                                            backend: Backend) -> None:
    """Two admins: A plans free_gpu for off_vm; B assigns it to owner_vm first; A's plan must not give the GPU
    to a second VM. It exits with Conflict (exit code 6), A's change undone, B's assignment intact."""
    stale = plan(backend, assign_request(backend_env))
    with backend_env.open() as other:
        execute(other, plan(other, AssignmentRequest(backend_env.owner_vm, (backend_env.free_gpu,))))
    before = _read_host(backend_env)
    with pytest.raises(Conflict) as caught:
        execute(backend, stale)
    assert caught.value.exit_code == 6 and caught.value.to_dict()["error"] == "conflict"
    assert caught.value.rolled_back is True
    after = _read_host(backend_env)
    assert gpu_at(after, backend_env.free_gpu).assigned_to == backend_env.owner_vm
    assert after == before


# -- hostile names -------------------------------------------------------------------------------------------
def test_hostile_vm_names_round_trip_exactly_and_nothing_is_interpreted(backend_env: BackendEnv,
                                                                       backend: Backend) -> None:
    _needs(backend_env.hostile_vms, "VMs with hostile names")
    assert set(backend_env.hostile_vms) <= set(HOSTILE_NAMES), "take the names from HOSTILE_NAMES"
    facts = backend.inventory()
    assert {vm.name for vm in facts.vms} >= set(backend_env.hostile_vms), "inventory() must return each name as is"
    for name in backend_env.hostile_vms:
        before = _read_host(backend_env)
        request = AssignmentRequest(name, (backend_env.free_gpu,))
        result = plan(backend, request)
        assert result.vm == name and not result.blocked, (name, [f for f in result.findings if f.blocks])
        outcome = execute(backend, result)
        assert outcome.vm_after is not None and outcome.vm_after.name == name
        assert backend_env.free_gpu in outcome.vm_after.assigned
        assigned = _read_host(backend_env)
        assert gpu_at(assigned, backend_env.free_gpu).assigned_to == name
        assert [vm.name for vm in assigned.vms] == [vm.name for vm in before.vms]
        execute(backend, plan(backend, ReleaseRequest(name)))
        assert _read_host(backend_env) == before, f"VM {name!r} did not come back as it was"


# -- GPU shares (core/domain/sharing.py) ---------------------------------------------------------------------
def share_request(env: BackendEnv, vm: str | None = None) -> AssignmentRequest:
    assert env.shared_gpu is not None and env.share_type is not None
    return AssignmentRequest(vm or env.off_vm, (env.shared_gpu,), AssignOptions(share=env.share_type))


def share_release(env: BackendEnv, vm: str | None = None) -> ReleaseRequest:
    assert env.shared_gpu is not None
    return ReleaseRequest(vm or env.off_vm, (env.shared_gpu,))


def _held(env: BackendEnv, vm: str) -> tuple[Share, ...]:
    assert env.shared_gpu is not None
    with env.open() as fresh:
        return gpu_at(fresh.inventory(), env.shared_gpu).sharing.held_by(vm)


def test_a_backend_without_shares_says_not_supported_and_changes_nothing(backend_env: BackendEnv,
                                                                         backend: Backend) -> None:
    """A backend lists the share modes it can give (Capabilities.share_modes); one that lists none refuses a share
    request with "not supported on PLATFORM" before anything is written. A backend that gives shares names a GPU
    that offers them in its environment (BackendEnv.shared_gpu), and the tests below run on it."""
    if backend_env.shared_gpu is not None:
        assert backend.capabilities.share_modes, "shared_gpu is set, so the backend must list its share modes"
        facts = backend.inventory()
        offered = gpu_at(facts, backend_env.shared_gpu).sharing
        assert offered.types_answering(backend_env.share_type or ""), "shared_gpu must offer share_type"
        assert {t.mode for t in offered.types} <= set(backend.capabilities.share_modes)
        return
    assert not backend.capabilities.share_modes
    before = _read_host(backend_env)
    with pytest.raises(NotSupported) as caught:
        plan(backend, AssignmentRequest(backend_env.off_vm, (backend_env.free_gpu,), AssignOptions(share="P40-1Q")))
    assert backend.platform in caught.value.message and caught.value.exit_code == NotSupported.exit_code
    assert _read_host(backend_env) == before


def _gives_shares(env: BackendEnv, backend: Backend) -> bool:
    """Whether the share tests below apply: where the environment names no shared GPU, the backend must list no share
    mode (test_a_backend_without_shares_says_not_supported_and_changes_nothing then holds it to refusing them)."""
    if env.shared_gpu is None:
        assert not backend.capabilities.share_modes, "a backend that gives shares names BackendEnv.shared_gpu"
        return False
    return True


def test_a_share_is_given_seen_on_a_new_connection_taken_back_and_the_host_is_as_before(backend_env: BackendEnv,
                                                                                         backend: Backend) -> None:
    if not _gives_shares(backend_env, backend):
        return
    before = _read_host(backend_env)
    assert not _held(backend_env, backend_env.off_vm)
    result = plan(backend, share_request(backend_env))
    assert not result.blocked and result.shares and not result.nothing_to_do, result.findings
    execute(backend, result)
    (held,) = _held(backend_env, backend_env.off_vm)
    assert held.type_id == result.shares[0].type.id
    # a second assign of the same share is a plan with nothing to do (idempotent), on a new connection too
    with backend_env.open() as again:
        assert plan(again, share_request(backend_env)).nothing_to_do
    with backend_env.open() as other:
        execute(other, plan(other, share_release(backend_env)))
    assert not _held(backend_env, backend_env.off_vm)
    with backend_env.open() as again:
        assert plan(again, share_release(backend_env)).nothing_to_do
    assert _read_host(backend_env) == before


def test_a_failure_at_any_step_of_a_share_assign_or_release_rolls_the_host_back_exactly(backend_env: BackendEnv,
                                                                                       backend: Backend) -> None:
    if not _gives_shares(backend_env, backend):
        return
    _fails_at_each_step_and_rolls_back(backend_env, share_request(backend_env))
    execute(backend, plan(backend, share_request(backend_env)))
    _fails_at_each_step_and_rolls_back(backend_env, share_release(backend_env))


def test_hostile_vm_names_take_a_share_and_give_it_back_exactly(backend_env: BackendEnv, backend: Backend) -> None:
    if not _gives_shares(backend_env, backend):
        return
    _needs(backend_env.hostile_vms, "VMs with hostile names")
    for name in backend_env.hostile_vms:
        before = _read_host(backend_env)
        result = plan(backend, share_request(backend_env, name))
        assert result.vm == name and not result.blocked, (name, [f for f in result.findings if f.blocks])
        execute(backend, result)
        (held,) = _held(backend_env, name)
        assert held.holder == name
        execute(backend, plan(backend, share_release(backend_env, name)))
        assert _read_host(backend_env) == before, f"VM {name!r} did not give its share back exactly"
