"""A real `gpupass assign --allow-host-reboot` process killed (SIGKILL) during its host reboot step: with
RebootHost_Task, or the EnterMaintenanceMode_Task before it, on the wire (vcsim's `/gpupass/hold`), which the
simulator then carries out. Whatever the host did with the call, no running VM is stopped (a host with running VMs
does not enter maintenance mode, and gpupass never forces a reboot); `status` shows the run's intent, maintenance
mode included where the run left the host in it; the same assign run again finishes the run -- taking the host out of
the maintenance mode the stopped run put it in -- or, while a VM still runs there, fails, changes nothing and keeps
the stopped run's intent for `status`. Killed with the step's last task, ExitMaintenanceMode_Task, on the wire, the host
is out of maintenance mode (carried out) or still in it (lost on the way), and `status` and a rerun say which."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS, killed_with_call_held  # noqa: E402
from tests.integration.esxi.test_esxi_backend import USER  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4, _t4_held_by_vmkernel, find_vm  # noqa: E402


class Lab:
    """esx01 with its T4 held by the VMkernel (applyNow cannot switch it: it needs the reboot) and a CLI on it."""

    def __init__(self, fresh_vcsim, drs=None):
        cfg = _t4_held_by_vmkernel()
        if drs:  # gpu-cluster's DRS behavior (ClusterDrsConfigInfo.defaultVmBehavior)
            cfg["cluster_drs"] = {"gpu-cluster": drs}
        self.sim = fresh_vcsim(cfg, username=USER)
        self.si = self.sim.connect()
        self.uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{self.sim.port}/Lab"
        self.env = {**os.environ, "GPUPASS_PASSWORD": self.sim.password}
        self.host = find_vm(self.si, "cad-ws").runtime.host
        self.assign = ["assign", self.uri, "cad-ws", str(T4), "--yes", "--allow-host-reboot"]

    def gpupass(self, *args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(self.sim.ca_file)], env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def killed_with_call_on_the_wire(self, call):
        """Run the assign in its own process, kill it while `call` waits at the simulator, let the call through."""
        killed_with_call_held(self.sim, call, self.assign, self.env)

    def cad_ws(self):
        status = self.gpupass("status", self.uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "cad-ws")

    def power(self, vm):
        return str(find_vm(self.si, vm).runtime.powerState)

    def t4(self):
        host = next(h for h in self.sim.state()["hosts"] if h["name"] == "esx01.lab.local")
        return next(d for d in host["devices"] if d["id"] == str(T4))


def test_a_client_killed_with_the_reboot_on_the_wire_is_shown_by_status_and_a_rerun_takes_the_host_out(fresh_vcsim):
    from pyVim.task import WaitForTask

    lab = Lab(fresh_vcsim)
    WaitForTask(find_vm(lab.si, "web01").PowerOffVM_Task())     # maintenance mode waits for a host without running VMs
    lab.killed_with_call_on_the_wire("RebootHost_Task")
    # The killed run had put the host in maintenance mode; the simulator then rebooted it: the T4 is active now.
    assert lab.host.runtime.inMaintenanceMode is True and lab.t4()["active"] is True
    vm = lab.cad_ws()
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    note = vm["unfinished"][0]
    assert "host esx01.lab.local is in maintenance mode" in note and "run the same `gpupass assign` again" in note
    plan = lab.gpupass("plan", lab.uri, "cad-ws", str(T4), "--allow-host-reboot", "--json")
    actions = [s["action"] for s in json.loads(plan.stdout)["steps"]]
    assert actions == ["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"], plan.stdout
    again = lab.gpupass(*lab.assign)
    assert again.returncode == 0, again.stdout + again.stderr
    vm = lab.cad_ws()
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm
    assert lab.host.runtime.inMaintenanceMode is False and lab.power("web01") == "poweredOff"


def test_a_client_killed_entering_maintenance_mode_never_stops_a_running_vm_and_a_rerun_converges(fresh_vcsim):
    from pyVim.task import WaitForTask

    # With a fully automated DRS the plan lets the run try (DRS would migrate web01); the simulator's DRS finds no
    # host for it, as a real one may not (NoMaintenanceModeDrsRecommendationForVM), so the host stays out of it.
    lab = Lab(fresh_vcsim, drs="fullyAutomated")
    assert lab.power("web01") == "poweredOn"
    lab.killed_with_call_on_the_wire("EnterMaintenanceMode_Task")
    # web01 runs on esx01, so the host did not enter maintenance mode; nothing was rebooted or stopped. The killed
    # run had switched the T4 to passthrough (pending the reboot); its intent says so.
    assert lab.host.runtime.inMaintenanceMode is False and lab.power("web01") == "poweredOn"
    assert lab.t4()["enabled"] is True and lab.t4()["active"] is False
    vm = lab.cad_ws()
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    # the same assign while web01 still runs: refused by the host, nothing changed, the stopped run still shown
    refused = lab.gpupass(*lab.assign, "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    error = json.loads(refused.stdout)
    assert error["rolled_back"] is True and "web01" in error["message"], error
    assert lab.host.runtime.inMaintenanceMode is False and lab.power("web01") == "poweredOn"
    assert lab.cad_ws()["unfinished"] == vm["unfinished"]
    WaitForTask(find_vm(lab.si, "web01").PowerOffVM_Task())     # the admin powers web01 off (or migrates it)
    again = lab.gpupass(*lab.assign)
    assert again.returncode == 0, again.stdout + again.stderr
    vm = lab.cad_ws()
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm
    assert lab.host.runtime.inMaintenanceMode is False and lab.t4()["active"] is True


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_taking_the_host_out_of_maintenance_mode_is_shown_by_status_and_a_rerun_finishes(
        fresh_vcsim, discard):
    """Killed with ExitMaintenanceMode_Task on the wire, the reboot done: carried out after, the host is out of
    maintenance mode and only the VM's change is left (`status` shows the intent; the same assign again is the
    reconfigure alone); lost on the way, the host stays in the maintenance mode the run put it in (`status` says so;
    the same assign again takes it out first)."""
    from pyVim.task import WaitForTask

    lab = Lab(fresh_vcsim)
    WaitForTask(find_vm(lab.si, "web01").PowerOffVM_Task())
    killed_with_call_held(lab.sim, "ExitMaintenanceMode_Task", lab.assign, lab.env, discard=discard)
    assert lab.t4()["active"] is True and lab.host.runtime.inMaintenanceMode is discard
    vm = lab.cad_ws()
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert ("host esx01.lab.local is in maintenance mode" in vm["unfinished"][0]) is discard
    plan = lab.gpupass("plan", lab.uri, "cad-ws", str(T4), "--allow-host-reboot", "--json")
    actions = [s["action"] for s in json.loads(plan.stdout)["steps"]]
    assert actions == (["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"] if discard
                       else ["esxi.reconfigure"]), plan.stdout
    again = lab.gpupass(*lab.assign)
    assert again.returncode == 0, again.stdout + again.stderr
    vm = lab.cad_ws()
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm
    assert lab.host.runtime.inMaintenanceMode is False


def test_a_lost_reply_to_the_reruns_exit_from_maintenance_mode_is_learnt_and_the_rerun_finishes(fresh_vcsim):
    """A run killed with RebootHost_Task on the wire left the host rebooted in maintenance mode; the same assign again
    takes it out (its exit-maintenance step), and that ExitMaintenanceMode_Task's answer is lost: gpupass finds the
    task in vCenter, done, and finishes."""
    from pyVim.task import WaitForTask

    lab = Lab(fresh_vcsim)
    WaitForTask(find_vm(lab.si, "web01").PowerOffVM_Task())
    lab.killed_with_call_on_the_wire("RebootHost_Task")
    assert lab.host.runtime.inMaintenanceMode is True
    lab.sim.drop_reply("ExitMaintenanceMode_Task")
    again = lab.gpupass(*lab.assign, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s["action"] for s in json.loads(again.stdout)["plan"]["steps"]] == [
        "esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"]
    vm = lab.cad_ws()
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm
    assert lab.host.runtime.inMaintenanceMode is False
