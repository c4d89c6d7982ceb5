"""Ctrl-C (SIGINT) during a change, on the core with a fake backend: the step under way is let finish, the change is
undone, and an Interrupted error (exit 130) says what the host holds. Real signals to this process, sent from inside
the fake's steps: the handler is what the CLI gets (core/interrupts.py)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Interrupted, OperationFailed
from gpupass.core.plugins import collect, make_plugin_manager
from gpupass.core.ports import StepState
from gpupass.core.service import execute, make_plan
from support.fakes import A, FakeBackend, FakePlugin, lab_facts, open_fake


@pytest.fixture
def registry():
    return collect(make_plugin_manager([FakePlugin()], load_entry_points=False))


def _plan(backend, registry):
    return make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (A("41:00.0"),)), registry)


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def _interrupt_in(monkeypatch, action: str, times: int = 1, after: bool = True) -> list[str]:
    """Ctrl-C `times` times while the fake's step `action` runs (after its write reached the host, or before)."""
    real = FakeBackend.apply
    seen: list[str] = []

    def apply(self, step):
        if step.action == action and not after:
            for _ in range(times):
                _ctrl_c()
        result = real(self, step)
        if step.action == action and after:
            for _ in range(times):
                _ctrl_c()
        seen.append(step.action)
        return result

    monkeypatch.setattr(FakeBackend, "apply", apply)
    return seen


def _ctrl_c_then_fail(monkeypatch, action: str, error: Exception) -> None:
    """Ctrl-C while the fake's step `action` runs, then the step fails on its own with `error`."""
    real = FakeBackend.apply

    def apply(self, step):
        if step.action == action:
            _ctrl_c()
            raise error
        return real(self, step)

    monkeypatch.setattr(FakeBackend, "apply", apply)


def test_ctrl_c_during_a_step_lets_it_finish_then_undoes_the_whole_change(registry, monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    applied = _interrupt_in(monkeypatch, "fake.reserve")
    notices: list[str] = []
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry), on_interrupt=notices.append)
    assert applied == ["fake.reserve"]  # the step under way finished; the next one never started
    assert caught.value.rolled_back is True and caught.value.exit_code == 130
    assert caught.value.to_dict()["error"] == "interrupted"
    assert "after step 'reserve 0000:41:00.0': the 1 step(s) made were undone" in caught.value.message
    assert "VM 'ml-train' is as it was" in caught.value.message
    assert ("undo", "fake.reserve") in FakeBackend.calls
    assert FakeBackend.state == before
    assert notices and "let finish" in notices[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back


def test_ctrl_c_during_the_last_step_undoes_every_step_made(registry, monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    _interrupt_in(monkeypatch, "fake.attach")
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry))
    assert "the 2 step(s) made were undone" in caught.value.message and caught.value.rolled_back is True
    assert [c for c in FakeBackend.calls if c[0] == "undo"] == [("undo", "fake.attach"), ("undo", "fake.reserve")]
    assert FakeBackend.state == before


def test_an_undo_that_fails_after_ctrl_c_is_reported_partial_with_the_step_left(registry, monkeypatch):
    backend = open_fake(lab_facts())
    _interrupt_in(monkeypatch, "fake.attach")
    FakeBackend.fail_undo = {"fake.reserve"}
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry))
    error = caught.value
    assert error.rolled_back is False and error.exit_code == 130
    assert "these steps of the change could not be undone: reserve 0000:41:00.0 (undo by hand: unreserve" \
        in error.message
    assert "undo the listed steps by hand" in error.remedy


def test_a_second_ctrl_c_stops_waiting_and_the_host_is_read_again(registry, monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("before"))
    _interrupt_in(monkeypatch, "fake.attach", times=2, after=False)  # the step is stopped before its write
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry))
    error = caught.value
    assert "interrupted (Ctrl-C) during step 'attach to ml-train'" in error.message
    assert "read again, showed it as not done; 1 completed step(s) were undone" in error.message
    assert error.rolled_back is True and "possibly still on its way" in error.remedy
    assert FakeBackend.state == before


def test_a_stopped_step_the_host_cannot_say_is_not_called_rolled_back(registry, monkeypatch):
    backend = open_fake(lab_facts())
    _interrupt_in(monkeypatch, "fake.attach", times=2)  # the fake's observe: "unknown"
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is False and caught.value.exit_code == 130


def test_ctrl_c_while_undoing_is_only_noted(registry, monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    _interrupt_in(monkeypatch, "fake.attach")
    real_undo = FakeBackend.undo

    def undo(self, step, token):
        _ctrl_c()
        _ctrl_c()
        real_undo(self, step, token)

    monkeypatch.setattr(FakeBackend, "undo", undo)
    notices: list[str] = []
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry), on_interrupt=notices.append)
    assert caught.value.rolled_back is True and FakeBackend.state == before
    assert any("being undone" in n for n in notices)


def test_a_step_that_fails_after_ctrl_c_is_still_an_interrupt_with_its_failure_said(registry, monkeypatch):
    """Ctrl-C, then the step under way fails on its own (a frozen host's timeout): exit 130 all the same."""
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    _ctrl_c_then_fail(monkeypatch, "fake.attach", OperationFailed("injected failure in fake.attach", rolled_back=True))
    with pytest.raises(Interrupted) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.rolled_back is True and caught.value.exit_code == 130
    assert "interrupted (Ctrl-C) during step 'attach to ml-train', which then failed (injected failure in " \
           "fake.attach); 1 completed step(s) were undone; the VM is as it was" in caught.value.message
    assert FakeBackend.state == before


def test_a_conflict_after_ctrl_c_stays_a_conflict(registry, monkeypatch):
    """Another run won while this one was interrupted: exit 6 says more than 130 (nothing of this run is left)."""
    from gpupass.core.errors import Conflict

    backend = open_fake(lab_facts())
    before = FakeBackend.state
    _ctrl_c_then_fail(monkeypatch, "fake.attach", Conflict("VM 'web01' claimed 0000:41:00.0 first"))
    with pytest.raises(Conflict) as caught:
        execute(backend, _plan(backend, registry))
    assert caught.value.exit_code == 6 and caught.value.rolled_back is True
    assert FakeBackend.state == before


def test_outside_the_main_thread_an_interrupt_is_a_keyboard_interrupt_and_the_host_is_read_again(registry,
                                                                                                monkeypatch):
    backend = open_fake(lab_facts())
    before = FakeBackend.state
    monkeypatch.setattr(FakeBackend, "observe", lambda self, step: StepState("after", token=before))
    real = FakeBackend.apply

    def apply(self, step):
        result = real(self, step)
        if step.action == "fake.attach":
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(FakeBackend, "apply", apply)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            execute(backend, _plan(backend, registry))
        except BaseException as error:  # noqa: BLE001 - the test looks at it
            caught.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert isinstance(caught[0], Interrupted) and caught[0].rolled_back is True
    assert "showed it as done; the failed step, which had gone through, and 1 completed step(s)" in caught[0].message
    assert FakeBackend.state == before
