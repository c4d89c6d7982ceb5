"""Faults on each host task of an ESXi assign's reboot step (`--allow-host-reboot`): EnterMaintenanceMode_Task,
RebootHost_Task, the wait until the host is back, ExitMaintenanceMode_Task.

A reply lost after vSphere carried the task out: gpupass learns the task's state from vCenter (TaskManager.recentTask,
TaskInfo.state) before it sends anything else, finds it done, and finishes the assign. An endpoint frozen (SIGSTOP)
with a task on the wire, or during the wait: gpupass cannot learn the task's end, so it sends no cleanup write that
would race it (an ExitMaintenanceMode_Task served before a late RebootHost_Task makes the reboot fail, after it leaves
the host rebooted) and keeps the run's earlier steps and intent record; the thawed host finishes the task; `status`
shows the run's intent (and the maintenance mode it left) and the same assign again finishes. A wait that runs past
the host's `reboot_timeout_s` reads the host back and says exactly what is there. A real `gpupass assign` process
killed during the wait leaves what the host then finishes, which `status` shows and a rerun completes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time

import pytest

from gpupass.core.domain.request import AssignmentRequest, AssignOptions
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS  # noqa: E402
from support.esxi_faults import frozen_before_its_write  # noqa: E402
from tests.integration.esxi.test_esxi_backend import USER, plan, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4, _t4_held_by_vmkernel, find_vm  # noqa: E402

REQUEST = AssignmentRequest("cad-ws", (T4,), AssignOptions(allow_host_reboot=True))
ESX01 = "esx01.lab.local"


class Lab:
    """esx01 with its T4 held by the VMkernel (applyNow leaves it for the reboot) and web01 off, so that the host may
    enter maintenance mode; `reboot_seconds`: how long the host is down (notResponding) after RebootHost_Task."""

    def __init__(self, fresh_vcsim, reboot_seconds=0.0):
        from pyVim.task import WaitForTask

        cfg = _t4_held_by_vmkernel()
        cfg["hosts"][0]["reboot_seconds"] = reboot_seconds
        self.sim = fresh_vcsim(cfg, username=USER)
        self.si = self.sim.connect()
        WaitForTask(find_vm(self.si, "web01").PowerOffVM_Task())
        self.host = find_vm(self.si, "cad-ws").runtime.host
        self.boot = self.host.runtime.bootTime

    def esx01(self):
        return next(h for h in self.sim.state()["hosts"] if h["name"] == ESX01)

    def t4(self):
        return next(d for d in self.esx01()["devices"] if d["id"] == str(T4))

    def back(self):
        """The host rebooted and connected again."""
        return self.esx01()["connected"] and self.t4()["active"] and self.host.runtime.bootTime != self.boot

    def backend(self, **options):
        from gpupass.backends.esxi.backend import EsxiBackend

        return EsxiBackend(dataclasses.replace(target(self.sim), options=options))

    def assigned_at_once(self):
        """The assign planned and run: it finishes in one go, the host rebooted and out of maintenance mode."""
        with self.backend() as backend:
            result = plan(backend, REQUEST)
            assert [s.action for s in result.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reboot",
                                                        "esxi.reconfigure"]
            execute(backend, result)
            vm = backend.inventory().find_vm("cad-ws")
        return vm

    def stopped_and_finished_by_a_rerun(self, actions):
        """`status` shows the run's intent (and the maintenance mode it left, if it did); the same assign again plans
        `actions` and finishes: the VM holds the T4, nothing unfinished, the host out of maintenance mode."""
        with self.backend() as again:
            vm = again.inventory().find_vm("cad-ws")
            assert T4 not in vm.assigned and len(vm.unfinished) == 1, vm
            assert "run the same `gpupass assign` again" in vm.unfinished[0], vm.unfinished
            if self.host.runtime.inMaintenanceMode:
                assert f"host {ESX01} is in maintenance mode, where the run put it" in vm.unfinished[0]
            rerun = plan(again, REQUEST)
            assert [s.action for s in rerun.steps] == actions
            execute(again, rerun)
            vm = again.inventory().find_vm("cad-ws")
        assert T4 in vm.assigned and vm.unfinished == (), vm
        assert self.host.runtime.inMaintenanceMode is False and self.t4()["active"] is True
        with self.backend() as once_more:
            assert plan(once_more, REQUEST).steps == ()


# -- a reply lost after vSphere carried the task out: learnt from vCenter, and finished ----------------------------
@pytest.mark.parametrize("call", ["EnterMaintenanceMode_Task", "RebootHost_Task", "ExitMaintenanceMode_Task"])
def test_a_lost_reply_to_a_host_task_of_the_reboot_step_is_learnt_from_vcenter_and_the_assign_finishes(
        fresh_vcsim, call):
    """The task's reference never reached gpupass: it finds the task in TaskManager.recentTask (this host, this kind,
    queued after the step began), reads its state -- success -- and goes on; no second task is sent (a second
    RebootHost_Task would reboot the host twice)."""
    lab = Lab(fresh_vcsim)
    lab.sim.drop_reply(call)
    vm = lab.assigned_at_once()
    assert T4 in vm.assigned and vm.unfinished == ()
    assert lab.host.runtime.inMaintenanceMode is False and lab.t4()["active"] is True
    reboots = [t for t in lab.si.content.taskManager.recentTask if t.info.descriptionId == "HostSystem.reboot"]
    assert len(reboots) == 1 and str(reboots[0].info.state) == "success"


# -- an endpoint frozen with the task on the wire: nothing more sent, the host reported as it is ------------------
def _sent_by_the_frozen_run(lab, kind):
    return [t for t in lab.si.content.taskManager.recentTask if t.info.descriptionId == kind]


@pytest.mark.parametrize("action, carried_out, in_maintenance, rerun", [
    # EnterMaintenanceMode_Task waits at the frozen endpoint: the thawed host enters maintenance mode; no reboot yet
    ("putting host", lambda lab: lab.host.runtime.inMaintenanceMode, True,
     ["esxi.intent", "esxi.reboot", "esxi.reconfigure"]),
    # RebootHost_Task waits: the thawed host reboots, and stays in the maintenance mode the run put it in
    ("rebooting host", lambda lab: lab.back(), True, ["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"]),
    # ExitMaintenanceMode_Task waits (the reboot done): the thawed host leaves maintenance mode; the VM's change is left
    ("taking host", lambda lab: lab.back() and not lab.host.runtime.inMaintenanceMode, False, ["esxi.reconfigure"]),
])
def test_an_endpoint_frozen_on_a_host_task_of_the_reboot_step_gets_no_racing_cleanup_and_a_rerun_finishes(
        fresh_vcsim, action, carried_out, in_maintenance, rerun):
    lab = Lab(fresh_vcsim)
    error = frozen_before_its_write(lab.sim, target(lab.sim), REQUEST, lambda: carried_out(lab), action=action)
    assert "nothing more was sent to host esx01.lab.local" in error.message, error.message
    assert "could not be undone" in error.message and "has not settled" in error.message, error.message
    assert "once the host answers" in error.remedy, error.remedy
    # The host finished the task that was waiting, and nothing raced it: no ExitMaintenanceMode_Task was sent after a
    # RebootHost_Task whose end was not known (the maintenance mode is where the task left it), the passthrough
    # switch was not taken back (the T4 enabled), and the run's record is still in the VM.
    time.sleep(0.5)  # anything the frozen run had still sent would have been served by now
    assert lab.host.runtime.inMaintenanceMode is in_maintenance
    assert lab.t4()["enabled"] is True
    if action == "rebooting host":
        assert _sent_by_the_frozen_run(lab, "HostSystem.exitMaintenanceMode") == []
    lab.stopped_and_finished_by_a_rerun(rerun)


def test_an_endpoint_frozen_during_the_reboot_wait_gets_no_racing_cleanup_and_a_rerun_finishes(fresh_vcsim):
    """Frozen after RebootHost_Task answered, while gpupass waits for the host (down 1 s): the wait's read gets no
    answer from vCenter; no ExitMaintenanceMode_Task is sent (served by the thawed endpoint while the host is still
    down it would fail, after it is back it would succeed: not fixed); the host comes back in maintenance mode."""
    lab = Lab(fresh_vcsim, reboot_seconds=1.0)
    reads = []

    def the_waits_first_read(action, *args, **kwargs):
        if str(action) == "reading the host's state":
            reads.append(action)
        return len(reads) == 2  # the first is the boot time read before RebootHost_Task

    from gpupass.backends.esxi.backend import EsxiBackend
    from support.frozen_endpoint import frozen_before_its_write as frozen

    backend = EsxiBackend(dataclasses.replace(target(lab.sim), timeout=1.0))
    error = frozen(lab.sim.pid, backend, REQUEST, lab.back, sends="_call", is_the_write=the_waits_first_read)
    assert f"waiting for host {ESX01} to come back" in error.message, error.message
    assert "nothing more was sent" in error.message
    time.sleep(0.5)
    assert lab.host.runtime.inMaintenanceMode is True and lab.t4()["active"] is True
    assert _sent_by_the_frozen_run(lab, "HostSystem.exitMaintenanceMode") == []
    lab.stopped_and_finished_by_a_rerun(["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"])


def test_a_reboot_wait_past_the_hosts_timeout_reads_the_host_back_and_says_what_is_there(fresh_vcsim):
    """The host stays down longer than the host's `reboot_timeout_s` (0.5 s here, 3 s down): vCenter answers, so the
    host is read back -- notResponding, in the maintenance mode this run put it in, the T4 enabled and not active --
    and reported so with what finishes or reverts it; nothing is written to the rebooting host, the intent stays."""
    lab = Lab(fresh_vcsim, reboot_seconds=3.0)
    with lab.backend(reboot_timeout_s=0.5) as backend:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan(backend, REQUEST))
    message = caught.value.message
    assert caught.value.rolled_back is False
    assert f"host {ESX01} did not come back within 0.5s" in message, message
    assert (f"read back: host {ESX01} is notResponding" in message and "in maintenance mode (this run put it there)"
            in message and f"passthrough of {T4} enabled, not active" in message), message
    assert "has not settled" in message and "run the same command again to finish" in caught.value.remedy
    assert lab.esx01()["not_responding"] is True and lab.t4()["enabled"] is True
    deadline = time.monotonic() + 10
    while not lab.back():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert lab.host.runtime.inMaintenanceMode is True
    lab.stopped_and_finished_by_a_rerun(["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"])


def test_a_client_killed_during_the_reboot_wait_is_shown_by_status_and_a_rerun_finishes(fresh_vcsim):
    """A real `gpupass assign --allow-host-reboot` killed (SIGKILL) while it waits for the rebooting host (down 2 s):
    the host comes back in the maintenance mode the run put it in; `status` (the CLI, --json) shows the run's intent
    with it, and the same assign again takes the host out and gives cad-ws the T4."""
    lab = Lab(fresh_vcsim, reboot_seconds=2.0)
    uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{lab.sim.port}/Lab"
    env = {**os.environ, "GPUPASS_PASSWORD": lab.sim.password}

    def gpupass(*args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(lab.sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    client = subprocess.Popen([*GPUPASS, "assign", uri, "cad-ws", str(T4), "--yes", "--allow-host-reboot",
                               "--ca-file", str(lab.sim.ca_file)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not lab.esx01()["not_responding"]:  # RebootHost_Task ran: the client now waits for the host
            assert time.monotonic() < deadline and client.poll() is None, "the host never went down"
            time.sleep(0.02)
        client.send_signal(signal.SIGKILL)
        assert client.wait(30) == -signal.SIGKILL
    finally:
        if client.poll() is None:
            client.kill()
    deadline = time.monotonic() + 10
    while not lab.back():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status = gpupass("status", uri, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    vm = next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "cad-ws")
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert f"host {ESX01} is in maintenance mode, where the run put it" in vm["unfinished"][0]
    again = gpupass("assign", uri, "cad-ws", str(T4), "--yes", "--allow-host-reboot")
    assert again.returncode == 0, again.stdout + again.stderr
    assert lab.host.runtime.inMaintenanceMode is False
    status = gpupass("status", uri, "--json")
    vm = next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "cad-ws")
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm


@pytest.mark.parametrize("value", ["soon", 0, -5, True, None])
def test_a_reboot_timeout_that_is_no_number_of_seconds_is_refused_when_the_host_is_opened(fresh_vcsim, value):
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.core.errors import UsageError

    sim = fresh_vcsim(username=USER)
    with pytest.raises(UsageError) as caught:
        EsxiBackend(dataclasses.replace(target(sim), options={"reboot_timeout_s": value}))
    assert "reboot_timeout_s" in caught.value.message and repr(value) in caught.value.message
    assert "reboot_timeout_s = 900" in caught.value.remedy
