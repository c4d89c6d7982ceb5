"""After a step fails without saying what it left (timeout, lost connection, interrupt), the core asks the
backend to read the host again and reports what is there — never an assumed rollback."""

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Conflict, ConnectionFailed, OperationFailed
from gpupass.core.plugins import collect, make_plugin_manager
from gpupass.core.ports import StepState
from gpupass.core.service import execute, make_plan
from support.fakes import A, FakeBackend, FakePlugin, lab_facts, open_fake


@pytest.fixture
def registry():
    return collect(make_plugin_manager([FakePlugin()], load_entry_points=False))


def _plan(backend, registry):
    return make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (A("41:00.0"),)), registry)


def _attach_then_lose_the_reply(monkeypatch, error):
    """The attach reaches the host, then the reply is lost."""
    real = FakeBackend.apply

    def apply(self, step):
        result = real(self, step)
        if step.action == "fake.attach":
            raise error
        return result

    monkeypatch.setattr(FakeBackend, "apply", apply)


def test_an_error_without_a_rollback_flag_is_not_reported_as_rolled_back(registry, monkeypatch):
    backend = open_fake(lab_facts())
    _attach_then_lose_the_reply(monkeypatch, ConnectionFailed("connection reset by lab"))
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False
    assert "not known" in caught.value.message and "gpupass status" in caught.value.remedy


def test_a_step_the_host_shows_as_not_done_is_rolled_back(registry, monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("before"))
    FakeBackend.fail_on = set()
    real = FakeBackend.apply

    def apply(self, step):
        if step.action == "fake.attach":
            raise TimeoutError("read timed out")
        return real(self, step)

    monkeypatch.setattr(FakeBackend, "apply", apply)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message
    assert FakeBackend.state == before


def test_a_step_the_host_shows_as_done_is_undone_with_the_rest(registry, monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("after", token=before))
    _attach_then_lose_the_reply(monkeypatch, ConnectionFailed("connection reset by lab"))
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is True and "the failed step, which had gone through, and 1 completed step(s) were undone" in caught.value.message
    assert FakeBackend.state == before


def test_an_unreadable_host_after_the_failure_is_said_so(registry, monkeypatch):
    backend = open_fake(lab_facts())

    def observe(self, step):
        raise ConnectionFailed("lab is gone")

    monkeypatch.setattr(FakeBackend, "observe", observe)
    _attach_then_lose_the_reply(monkeypatch, ConnectionFailed("connection reset by lab"))
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False and "could not be read again (lab is gone)" in caught.value.message


def test_an_interrupt_mid_step_is_reported_from_the_host(registry, monkeypatch):
    backend = open_fake(lab_facts())
    _attach_then_lose_the_reply(monkeypatch, KeyboardInterrupt())
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False


def test_a_conflict_keeps_its_kind_and_exit_code(registry, monkeypatch):
    backend = open_fake(lab_facts())
    FakeBackend.fail_on = set()
    real = FakeBackend.apply

    def apply(self, step):
        if step.action == "fake.attach":
            raise Conflict("VM 'web01' claimed 0000:41:00.0 first")
        return real(self, step)

    monkeypatch.setattr(FakeBackend, "apply", apply)
    with pytest.raises(Conflict) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back and caught.value.exit_code == 6 and caught.value.to_dict()["error"] == "conflict"


def test_an_undo_refused_because_another_run_took_the_device_is_left_as_it_is_not_handed_to_the_admin(
        registry, monkeypatch):
    """Undoing by hand a step whose place another run took would undo that run's change too: the error says the
    step stays and why, and the remedy does not ask for an undo by hand."""
    backend = open_fake(lab_facts())
    _attach_then_lose_the_reply(monkeypatch, ConnectionFailed("connection reset by lab"))
    monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("after"))
    real_undo = FakeBackend.undo

    def undo(self, step, token):
        if step.action == "fake.attach":
            raise Conflict("0000:41:00.0 is claimed by VM 'other', which holds it")
        return real_undo(self, step, token)

    monkeypatch.setattr(FakeBackend, "undo", undo)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False
    assert "(left as it is: 0000:41:00.0 is claimed by VM 'other', which holds it)" in caught.value.message
    assert "undo by hand" not in caught.value.message and "by hand" not in caught.value.remedy


def test_a_step_that_could_not_be_undone_keeps_the_failed_steps_own_remedy_beside_the_cores(registry, monkeypatch):
    """The failed step's remedy is what its backend knows (here: the timeout to raise for that host); the core's says
    what to do about the steps left. Was: the core's alone, the step's lost."""
    backend = open_fake(lab_facts())
    _attach_then_lose_the_reply(monkeypatch, ConnectionFailed(
        "lab did not answer within 2s", remedy="raise `timeout` in the host's [hosts.NAME] table"))
    monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("after"))

    def undo(self, step, token):
        raise OperationFailed("the host refused the undo", rolled_back=False)

    monkeypatch.setattr(FakeBackend, "undo", undo)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False and "undo by hand" in caught.value.message
    remedy = caught.value.remedy
    assert remedy.startswith("raise `timeout` in the host's [hosts.NAME] table; then ")
    assert f"undo the listed steps by hand, then run `gpupass status {backend.target.label}`" in remedy


def test_an_unknown_outcome_keeps_the_steps_remedy_and_the_way_to_finish_or_revert(registry, monkeypatch):
    backend = open_fake(lab_facts())
    _attach_then_lose_the_reply(monkeypatch, ConnectionFailed("connection reset by lab", remedy="check the lab host"))

    def observe(self, step):
        raise ConnectionFailed("lab is down")

    monkeypatch.setattr(FakeBackend, "observe", observe)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False and "the host could not be read again" in caught.value.message
    assert caught.value.remedy.startswith("check the lab host; then run `gpupass status HOST`: if the change is there")


def test_a_steps_remedy_is_kept_even_where_it_names_status_and_the_cores_is_not_said_twice(registry, monkeypatch):
    """A step's remedy that names `status` does not stand for the core's: the core's may say which steps to undo by
    hand. Only the same words are not repeated."""
    backend = open_fake(lab_facts())
    plan = _plan(backend, registry)
    attach = next(step for step in plan.steps if step.action == "fake.attach")
    core = f"run `gpupass status HOST`: if the change is there, finish with the same command again or revert it ({attach.undo})"
    for own, remedy in (("run `gpupass status HOST` once it answers",
                         f"run `gpupass status HOST` once it answers; then {core}"),
                        (core, core), (f"the host is slow; {core}", f"the host is slow; {core}")):
        _attach_then_lose_the_reply(monkeypatch, ConnectionFailed("no answer", remedy=own))
        monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("unknown", detail="it did not answer"))
        backend = open_fake(lab_facts())
        with pytest.raises(OperationFailed) as caught:
            execute(backend, _plan(backend, registry))
        assert caught.value.remedy == remedy
        monkeypatch.undo()
