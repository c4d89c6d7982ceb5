"""A device active for passthrough but no longer enabled: an assign with --allow-host-reboot whose last step, the VM's
reconfigure, fails after the host rebooted is undone -- the VM's change taken back, passthrough switched off again --
and the switch-back cannot undo the reboot. vSphere API reference, HostPciPassthruInfo: passthruActive "Whether passThru
is active for this device (meaning enabled + rebooted)", passthruEnabled "Whether passThru has been configured by the
user": the T4 is left active and not enabled, passthrough only until the host's next reboot.

`gpus` and `status` say so; the same assign again plans and carries out the enable step -- decided by passthruEnabled --
with no reboot, since the device is active (it used to plan no passthrough step at all, and gave the VM a device that
would stop being passthrough at the host's next reboot)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_host_rules import T4, find_vm  # noqa: E402
from tests.integration.esxi.test_esxi_reboot_faults import Lab  # noqa: E402


def test_a_rerun_after_an_undo_that_followed_the_reboot_enables_passthrough_again_without_a_reboot(fresh_vcsim):
    from pyVim.task import WaitForTask

    lab = Lab(fresh_vcsim)
    WaitForTask(find_vm(lab.si, "web01").PowerOffVM_Task())  # maintenance mode waits for a host without running VMs
    # the assign's second ReconfigVM_Task (after its intent record) is carried out, its reply lost: read back and
    # taken back, and with it the run's passthrough switch -- after the reboot had made the T4 active
    lab.sim.drop_reply("ReconfigVM_Task", skip=1)
    failed = lab.gpupass(*lab.assign, "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["rolled_back"] is True, failed.stdout
    assert lab.t4()["enabled"] is False and lab.t4()["active"] is True, lab.t4()
    vm = lab.cad_ws()
    assert str(T4) not in vm["assigned"] and vm["unfinished"] == [], vm
    booted = lab.host.runtime.bootTime

    gpus = lab.gpupass("gpus", lab.uri)
    assert "active but disabled: passthrough ends at next reboot" in " ".join(gpus.stdout.split()), gpus.stdout
    status = lab.gpupass("status", lab.uri)
    assert "active but disabled (passthrough ends at the next host reboot" in status.stdout, status.stdout
    ending = status.stdout.split("active but disabled", 1)[1]
    assert str(T4) in ending, status.stdout
    data = json.loads(lab.gpupass("gpus", lab.uri, "--json").stdout)
    t4 = next(g for g in data["gpus"] if g["address"].endswith(str(T4)))
    assert t4["passthrough"]["enabled"] is False and t4["passthrough"]["active"] is True, t4

    # the plan: the enable step, and no reboot -- with --allow-host-reboot or without it
    for extra in ((), ("--allow-host-reboot",)):
        planned = lab.gpupass("plan", lab.uri, "cad-ws", str(T4), *extra, "--json")
        assert planned.returncode == 0, planned.stdout + planned.stderr
        plan = json.loads(planned.stdout)
        assert [s["action"] for s in plan["steps"]] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"], plan
        assert not any(s["needs_host_reboot"] for s in plan["steps"]), plan["steps"]
        assert "enable passthrough again" in plan["steps"][1]["description"], plan["steps"][1]
        assert any(f["code"] == "host-passthrough-ends-at-reboot" for f in plan["findings"]), plan["findings"]
        assert not any(f["severity"] == "blocker" for f in plan["findings"]), plan["findings"]

    again = lab.gpupass("assign", lab.uri, "cad-ws", str(T4), "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert lab.t4()["enabled"] is True and lab.t4()["active"] is True, lab.t4()
    assert lab.host.runtime.bootTime == booted  # not rebooted
    vm = lab.cad_ws()
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm
    assert "active but disabled" not in lab.gpupass("status", lab.uri).stdout


def test_an_assign_of_a_device_the_vm_holds_already_enables_its_switched_off_passthrough_again(fresh_vcsim):
    """cad-ws holds the H100, whose passthrough on esx01 is active but no longer enabled (switched off since the reboot
    that made it active): the VM shows the assign done, yet at the host's next reboot the H100 stops being passthrough
    and cad-ws would not power on. The same assign plans the enable step alone (Backend.plan_finish_assign: no reboot,
    no VM change), carries it out, and then has nothing left to do."""
    import os
    import subprocess

    from gpupass.backends.esxi.lab.simulator import lab_config
    from support.cli import GPUPASS
    from tests.integration.esxi.test_esxi_backend import USER

    cfg = lab_config()
    cfg["hosts"][0]["gpus"][0]["passthru_enabled"] = False  # esx01's H100: active, not enabled
    sim = fresh_vcsim(cfg, username=USER)
    uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab"
    env = {**os.environ, "GPUPASS_PASSWORD": sim.password}

    def gpupass(*args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    def h100():
        host = next(h for h in sim.state()["hosts"] if h["name"] == "esx01.lab.local")
        return next(d for d in host["devices"] if d["id"] == "0000:3b:00.0")

    planned = gpupass("plan", uri, "cad-ws", "0000:3b:00.0", "--json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    steps = json.loads(planned.stdout)["steps"]
    assert [s["action"] for s in steps] == ["esxi.passthrough"], steps
    assert "enable passthrough again" in steps[0]["description"] and not steps[0]["needs_host_reboot"], steps
    done = gpupass("assign", uri, "cad-ws", "0000:3b:00.0", "--yes", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["applied"] is True, done.stdout + done.stderr
    assert (h100()["enabled"], h100()["active"]) == (True, True)
    again = gpupass("plan", uri, "cad-ws", "0000:3b:00.0", "--json")
    assert json.loads(again.stdout)["steps"] == [], again.stdout
