"""Plan, execute, roll back and verify, with the fake platform."""

import dataclasses

import pytest

from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.errors import NotFound, OperationFailed, PreflightFailed, UsageError
from gpupass.core.plugins import collect, make_plugin_manager
from gpupass.core.service import execute, make_plan
from support.fakes import A, FakeBackend, FakePlugin, lab_facts, open_fake


@pytest.fixture
def registry():
    return collect(make_plugin_manager([FakePlugin()], load_entry_points=False))


def assign(*gpus, vm="ml-train"):
    return AssignmentRequest(vm, tuple(A(g) for g in gpus))


def test_assign_applies_steps_in_order_and_verifies(registry):
    backend = open_fake(lab_facts())
    plan = make_plan(backend, backend.inventory(), assign("41:00.0"), registry)
    assert [s.action for s in plan.steps] == ["fake.reserve", "fake.attach"]
    assert plan.needs_vm_off and not plan.blocked
    assert [f.feature for f in plan.features_lost] == ["teleportation"]
    outcome = execute(backend, plan)
    assert len(outcome.applied) == 2
    assert outcome.facts_after.find_vm("ml-train").assigned == (A("41:00.0"),)
    assert [c for c in FakeBackend.calls if c[0] == "apply"] == [("apply", "fake.reserve"), ("apply", "fake.attach")]


def test_second_assign_is_a_no_op(registry):
    backend = open_fake(lab_facts())
    execute(backend, make_plan(backend, backend.inventory(), assign("41:00.0"), registry))
    again = make_plan(backend, backend.inventory(), assign("41:00.0"), registry)
    assert again.nothing_to_do and again.steps == ()
    FakeBackend.calls.clear()
    execute(backend, again)
    assert not [c for c in FakeBackend.calls if c[0] == "apply"]


def test_failure_mid_way_undoes_completed_steps_in_reverse(registry):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    plan = make_plan(backend, backend.inventory(), assign("41:00.0"), registry)
    FakeBackend.fail_on = {"fake.attach"}
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back
    assert "injected failure" in caught.value.message and "the VM is as it was" in caught.value.message
    assert [c for c in FakeBackend.calls if c[0] in ("apply", "undo")] == [
        ("apply", "fake.reserve"), ("apply", "fake.attach"), ("undo", "fake.reserve")]
    assert FakeBackend.state == before


def test_an_undo_that_fails_is_reported_with_the_manual_fix(registry):
    backend = open_fake(lab_facts())
    plan = make_plan(backend, backend.inventory(), assign("41:00.0"), registry)
    FakeBackend.fail_on, FakeBackend.fail_undo = {"fake.attach"}, {"fake.reserve"}
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert not caught.value.rolled_back
    assert "unreserve 0000:41:00.0" in caught.value.message


def test_blocked_plan_is_never_executed(registry):
    backend = open_fake(lab_facts())
    plan = make_plan(backend, backend.inventory(), assign("02:00.0"), registry)
    assert plan.blocked
    with pytest.raises(PreflightFailed) as caught:
        execute(backend, plan)
    assert caught.value.exit_code == 3
    assert not [c for c in FakeBackend.calls if c[0] == "apply"]


def test_a_state_the_host_does_not_confirm_is_an_error(registry, monkeypatch):
    backend = open_fake(lab_facts())
    plan = make_plan(backend, backend.inventory(), assign("41:00.0"), registry)
    monkeypatch.setattr(FakeBackend, "_move", lambda self, *args, **kwargs: None)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert "different state" in caught.value.message and not caught.value.rolled_back


def test_release_gives_back_all_gpus_of_the_vm(registry):
    backend = open_fake(lab_facts())
    plan = make_plan(backend, backend.inventory(), ReleaseRequest("cad-ws"), registry)
    assert [str(g.address) for g in plan.gpus] == ["0000:01:00.0"]
    outcome = execute(backend, plan)
    assert outcome.facts_after.find_vm("cad-ws").assigned == ()
    again = make_plan(backend, backend.inventory(), ReleaseRequest("cad-ws"), registry)
    assert again.nothing_to_do


def test_release_of_another_vms_gpu_is_refused(registry):
    backend = open_fake(lab_facts())
    with pytest.raises(UsageError, match="belongs to VM 'cad-ws'"):
        make_plan(backend, backend.inventory(), ReleaseRequest("ml-train", (A("01:00.0"),)), registry)


def test_unknown_vm_and_gpu_are_not_found_with_a_hint(registry):
    backend = open_fake(lab_facts())
    with pytest.raises(NotFound, match="no VM named 'ML-train'") as caught:
        make_plan(backend, backend.inventory(), assign("41:00.0", vm="ML-train"), registry)
    assert "gpupass vms" in caught.value.remedy
    with pytest.raises(NotFound, match="no GPU matches '0000:99:00.0'"):
        make_plan(backend, backend.inventory(), assign("99:00.0"), registry)


def test_naming_a_companion_points_at_its_gpu(registry):
    state = lab_facts()
    state = dataclasses.replace(state, gpus=tuple(dataclasses.replace(g, assigned_to=None) for g in state.gpus))
    backend = open_fake(state)
    with pytest.raises(UsageError, match="0000:01:00.1 is the audio device of GPU 0000:01:00.0"):
        make_plan(backend, backend.inventory(), assign("01:00.1"), registry)


def test_duplicate_and_missing_gpus_are_usage_errors():
    with pytest.raises(UsageError, match="named twice"):
        AssignmentRequest("vm", (A("41:00.0"), A("0000:41:00.0")))
    with pytest.raises(UsageError, match="no GPU given"):
        AssignmentRequest("vm", ())


def test_options_the_platform_lacks_are_not_supported(registry):
    from gpupass.core.domain.request import AssignOptions
    from gpupass.core.errors import NotSupported

    backend = open_fake(lab_facts())
    for option in ("live", "dynamic"):
        request = AssignmentRequest("ml-train", (A("41:00.0"),), AssignOptions(**{option: True}))
        with pytest.raises(NotSupported, match="not supported on fake"):
            make_plan(backend, backend.inventory(), request, registry)


def test_a_step_that_could_not_clean_up_after_itself_is_not_reported_as_rolled_back(registry, monkeypatch):
    backend = open_fake(lab_facts())
    plan = make_plan(backend, backend.inventory(), assign("41:00.0"), registry)

    def half_done(self, step):
        raise OperationFailed("dismounted, then the undo failed too", rolled_back=False)

    monkeypatch.setattr(FakeBackend, "apply", half_done)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is False
    assert "could not undo its own changes" in caught.value.message
