"""A vSphere task that does not end within the host's `task_timeout_s` (its [hosts.NAME] options table; 1800 s by
default): the simulator answers the call with a task that stays queued (vcsim's /gpupass/slow-task: a busy vCenter's
task queue) and carries the call out after gpupass has stopped waiting. gpupass never says "rolled back" then: the
step is read back as not known while its task runs, no undo of the run writes meanwhile (it would race the task), the
error names the host, the task and the option; once the task has ended, `status` shows what the host holds and the same
command again converges."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4  # noqa: E402

ESX01 = "esx01.lab.local"


def backend_for(sim, **options):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(dataclasses.replace(target(sim), options=options))


def until(condition, seconds=15.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the slow task never ended on the simulator"
        time.sleep(0.1)


def holds(sim, vm, address):
    with backend_for(sim) as backend:
        return address in backend.inventory().find_vm(vm).assigned


def test_a_reconfigure_task_past_the_hosts_task_timeout_is_not_known_and_the_host_finishes_it(fresh_vcsim, caplog):
    """ml-train's one ReconfigVM_Task stays queued for 3 s; gpupass waits 1 s (task_timeout_s = 1): the error says the
    outcome is not known (rolled_back false), naming the endpoint, the task and the option; the VM still reads as
    before at that moment, and the simulator then carries the change out -- the case a "rolled back" would have lied
    about. The same assign again has nothing to do."""
    sim = fresh_vcsim(username=USER)
    caplog.set_level(logging.INFO, logger="gpupass.esxi")
    with backend_for(sim, task_timeout_s=1) as backend:
        backend._progress_every_s = 0.3  # the progress line of a long wait, seen within the test's second
        result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        assert [s.action for s in result.steps] == ["esxi.reconfigure"]
        sim.slow_task("ReconfigVM_Task", 3)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
        error = caught.value
        assert error.rolled_back is False, error.message
        assert "what it left is not known yet" in error.message and "may still be carried out" in error.message
        assert "after 1s (option task_timeout_s)" in error.message and "127.0.0.1" in error.message
        task = error.__cause__.task
        assert task.startswith("task-") and f"task {task}" in error.message, error.message
        assert "task_timeout_s" in error.remedy and "gpupass status" in error.remedy
        assert A100_ACTIVE not in backend.inventory().find_vm("ml-train").assigned  # queued: not yet carried out
        assert any("still queued" in r.getMessage() and "task_timeout_s" in r.getMessage() for r in caplog.records)
        until(lambda: holds(sim, "ml-train", A100_ACTIVE))
        again = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        assert again.steps == () or not any(s.action == "esxi.reconfigure" for s in again.steps), again.steps
        assert backend.inventory().find_vm("ml-train").unfinished == ()


def test_a_task_that_ends_before_the_read_back_is_read_as_it_ended(fresh_vcsim):
    """The same timeout, but the task ends (carried out) before the service reads the step back: observe then reads
    the VM as it is -- the change there -- and the run takes it back like any step that went through."""
    sim = fresh_vcsim(username=USER)
    with backend_for(sim, task_timeout_s=0.5) as backend:
        before = backend.inventory().find_vm("ml-train")
        result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        sim.slow_task("ReconfigVM_Task", 1.0)
        still_running = backend._task_still_running

        def after_it_ended(vm):  # the read-back comes late: the task has ended by then
            until(lambda: holds(sim, "ml-train", A100_ACTIVE))
            return still_running(vm)

        backend._task_still_running = after_it_ended
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
        del backend._task_still_running
        assert caught.value.rolled_back is True, caught.value.message
        assert "the failed step had gone through and was undone" in caught.value.message
        assert backend.inventory().find_vm("ml-train") == before


def test_an_unfinished_reconfigure_after_host_steps_leaves_them_and_the_intent_for_status_and_a_rerun(fresh_vcsim):
    """cad-ws and the T4: intent record, passthrough switch, then the VM's reconfigure, whose task stays queued past
    the timeout. No undo is written while it may still run: the passthrough stays on and the intent record stays,
    each step said to be left as it is. The task then lands (the reconfigure removes the record): the assign is
    complete as the host has it, and `status` shows nothing unfinished."""
    sim = fresh_vcsim(username=USER)
    with backend_for(sim, task_timeout_s=0.5) as backend:
        result = plan(backend, AssignmentRequest("cad-ws", (T4,)))
        assert [s.action for s in result.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"]
        sim.slow_task("ReconfigVM_Task", 3, skip=1)  # the first ReconfigVM_Task is the intent record's
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
        message = caught.value.message
        assert caught.value.rolled_back is False, message
        assert "what it left is not known yet" in message and "was not undone: a task of this run has not ended" \
            in message, message
        t4 = next(d for h in sim.state()["hosts"] if h["name"] == ESX01 for d in h["devices"] if d["id"] == str(T4))
        assert t4["enabled"] is True  # not switched back under the queued reconfigure
        vm = backend.inventory().find_vm("cad-ws")
        assert T4 not in vm.assigned and len(vm.unfinished) == 1, vm.unfinished  # the intent, for `status`
        until(lambda: holds(sim, "cad-ws", T4))
        vm = backend.inventory().find_vm("cad-ws")
        assert T4 in vm.assigned and vm.unfinished == (), vm.unfinished


@pytest.mark.parametrize("call, in_maintenance, rerun", [
    ("EnterMaintenanceMode_Task", True, ["esxi.intent", "esxi.reboot", "esxi.reconfigure"]),
    ("RebootHost_Task", True, ["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"]),
    ("ExitMaintenanceMode_Task", False, ["esxi.reconfigure"]),
])
def test_a_host_task_past_the_hosts_task_timeout_gets_no_racing_cleanup_and_a_rerun_finishes(
        fresh_vcsim, call, in_maintenance, rerun):
    """A host task of the reboot step (cad-ws, the T4, --allow-host-reboot) stays queued past task_timeout_s: its end
    is not known, so nothing more is sent to the host (a cleanup would race it), the host is read back and said as it
    is, the run's earlier steps and intent record stay. The host then carries the task out; `status` shows the run's
    intent and the same assign again finishes."""
    from tests.integration.esxi.test_esxi_reboot_step_faults import REQUEST, Lab

    lab = Lab(fresh_vcsim)
    with lab.backend(task_timeout_s=0.5) as backend:
        result = plan(backend, REQUEST)
        lab.sim.slow_task(call, 2)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, result)
    message = caught.value.message
    assert caught.value.rolled_back is False, message
    assert "was still queued after 0.5s (option task_timeout_s)" in message, message
    assert f"nothing more was sent to host {ESX01}" in message and f"read back: host {ESX01}" in message, message
    until(lambda: bool(lab.host.runtime.inMaintenanceMode) is in_maintenance and (call == "EnterMaintenanceMode_Task"
                                                                                 or lab.back()))
    time.sleep(0.3)
    assert lab.host.runtime.inMaintenanceMode is in_maintenance and lab.t4()["enabled"] is True
    lab.stopped_and_finished_by_a_rerun(rerun)


def test_a_task_timeout_that_is_no_number_of_seconds_is_refused_when_the_host_is_opened(fresh_vcsim):
    from gpupass.core.errors import UsageError

    sim = fresh_vcsim(username=USER)
    with pytest.raises(UsageError) as caught:
        backend_for(sim, task_timeout_s="soon")
    assert "option task_timeout_s of host vcsim" in caught.value.message and "'soon'" in caught.value.message
