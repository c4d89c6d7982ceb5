"""`--allow-host-reboot` on a host with running VMs is refused at check/plan time (`esxi-reboot-stops-vms`, a blocker,
exit 3), not found out at apply: gpupass reboots a host only in maintenance mode, which a host enters only once no VM
runs there, and nothing moves them there unless the cluster's DRS is fully automated ("If DRS is in fully-automatic
mode, these are automatically scheduled": vSphere API reference, HostSystem.EnterMaintenanceMode). Then it is a
warning -- except for a running VM holding a passthrough device, which DRS cannot migrate. The lab's clusters are read
from the simulator (ClusterDrsConfigInfo.defaultVmBehavior, set per cluster by the lab's `cluster_drs`)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core.domain.request import AssignmentRequest, AssignOptions

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS  # noqa: E402
from tests.integration.esxi.test_esxi_backend import A100_OFF, USER, plan, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4  # noqa: E402

REBOOT = AssignOptions(allow_host_reboot=True)


def findings(sim, vm, gpu, options=REBOOT):
    from gpupass.backends.esxi.backend import EsxiBackend

    with EsxiBackend(target(sim)) as backend:
        result = plan(backend, AssignmentRequest(vm, (gpu,), options))
    return [f for f in result.findings if f.code == "esxi-reboot-stops-vms"], result


def with_drs(behavior, **changes):
    cfg = lab_config()
    if behavior is not None:
        cfg["cluster_drs"] = {"gpu-cluster": behavior}
    for vm in cfg["vms"]:
        vm.update(changes.get(vm["name"], {}))
    return cfg


@pytest.mark.parametrize("behavior, why", [
    (None, "cluster gpu-cluster's DRS has no automation level set"),
    ("manual", "cluster gpu-cluster's DRS is manual, which only recommends the migrations"),
    ("partiallyAutomated", "cluster gpu-cluster's DRS is partiallyAutomated"),
])
def test_a_reboot_of_a_host_with_a_running_vm_is_blocked_unless_drs_is_fully_automated(fresh_vcsim, behavior, why):
    """esx02 must reboot for the A100 (it cannot rebind) and render01 runs there: blocked, naming the VM, why nothing
    moves it, and the remedy -- migrate or power it off, maintenance mode by hand, or a fully automated DRS."""
    sim = fresh_vcsim(with_drs(behavior, render01={"power_state": "poweredOn"}), username=USER)
    (found,), result = findings(sim, "ml-train", A100_OFF)
    assert found.blocks and result.blocked
    assert "host esx02.lab.local may have to reboot" in found.message and "runs render01" in found.message
    assert why in found.message and "never stops a running VM" in found.message, found.message
    assert "migrate or power off render01" in found.remedy and "maintenance mode yourself" in found.remedy
    assert "set cluster gpu-cluster's DRS to fully automated" in found.remedy
    assert "without --allow-host-reboot" not in found.remedy  # esx02 cannot activate it at once


def test_with_a_fully_automated_drs_it_is_a_warning_that_says_what_drs_will_do(fresh_vcsim):
    sim = fresh_vcsim(with_drs("fullyAutomated", render01={"power_state": "poweredOn"}), username=USER)
    (found,), result = findings(sim, "ml-train", A100_OFF)
    assert not found.blocks and not result.blocked
    assert "fully automated DRS of cluster gpu-cluster migrates them" in found.message
    assert "the assign fails with nothing rebooted" in found.message


def test_a_running_vm_holding_a_passthrough_device_blocks_even_with_a_fully_automated_drs(fresh_vcsim):
    """render01 runs on esx02 holding the other A100: no vMotion for it, so DRS cannot empty the host."""
    sim = fresh_vcsim(with_drs("fullyAutomated", render01={
        "power_state": "poweredOn", "firmware": "efi", "memory_reservation_mb": 16 * 1024,
        "memory_reservation_locked_to_max": True, "passthrough": ["0000:3b:00.0"],
        "extra_config": {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": "256"}}), username=USER)
    (found,), _ = findings(sim, "ml-train", A100_OFF)
    assert found.blocks
    assert "DRS cannot migrate render01: a VM holding a passthrough device has no vMotion" in found.message
    assert "fully automated" not in found.remedy


def test_a_host_that_may_activate_at_once_is_blocked_too_and_told_it_needs_no_reboot_option(fresh_vcsim):
    """esx01 (rebind-capable) runs web01: with --allow-host-reboot whether it reboots is known only at apply, so the
    plan is refused, and the remedy says the assign without the option activates at once or switches back."""
    sim = fresh_vcsim(username=USER)
    (found,), _ = findings(sim, "cad-ws", T4)
    assert found.blocks and "runs web01" in found.message and "if it cannot activate the device at once" in \
        found.message
    assert "without --allow-host-reboot" in found.remedy
    none, result = findings(sim, "cad-ws", T4, AssignOptions())
    assert none == [] and not result.blocked


def test_no_finding_where_no_vm_runs_or_no_reboot_is_needed(fresh_vcsim):
    sim = fresh_vcsim(username=USER)  # nothing runs on esx02
    assert findings(sim, "ml-train", A100_OFF)[0] == []


def test_the_cli_refuses_the_plan_and_the_assign_with_exit_3_and_changes_nothing(fresh_vcsim):
    sim = fresh_vcsim(username=USER)
    uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab"
    env = {**os.environ, "GPUPASS_PASSWORD": sim.password}
    before = sim.state()
    for command in (["plan"], ["assign", "--yes"]):
        done = subprocess.run([*GPUPASS, command[0], uri, "cad-ws", str(T4), *command[1:], "--allow-host-reboot",
                               "--json", "--ca-file", str(sim.ca_file)], env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 3, done.stdout + done.stderr
        out = json.loads(done.stdout)
        codes = {f["code"] for f in out.get("plan", out)["findings"] if f["severity"] == "blocker"}
        assert out.get("applied", False) is False
        assert "esxi-reboot-stops-vms" in codes, done.stdout
    assert sim.state() == before
