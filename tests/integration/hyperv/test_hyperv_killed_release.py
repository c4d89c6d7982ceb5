"""A gpupass process killed (SIGKILL) in the middle of a release on Hyper-V: its script already on the wire.

The endpoint holds the release script's Command unanswered; the client process is killed; the host then runs the
script it was sent (as Windows runs a command whose client vanished). The release is one script, so the host is
exactly released -- device back on the host, the VM's stop action and MMIO restored from the restore record in its
notes, the record consumed once -- or, where the script stopped at its first device, exactly as before with the
record still there, or -- where the host failed the script after it removed the device -- half-way with its intent in
the record; `gpupass status` says which, and the same release run again converges (finishes the half-way one)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.lab.hostmodel import lab_host
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from hyperv_helpers import PASSWORD, USER
from support.cli import GPUPASS, killed_with_script_held

GPU = str(address_map([A100_2_LOC])[A100_2_LOC])


@pytest.mark.parametrize("host_runs_it", ["whole", "stopped-at-first-device", "stopped-after-removing-it"])
def test_a_client_killed_with_its_release_on_the_wire_leaves_the_vm_exactly_released_or_as_before(
        endpoint_factory, host_runs_it):
    model = lab_host()
    original = model.to_dict()
    ep = endpoint_factory(model, "basic")
    uri = f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}

    def gpupass(*args):
        return subprocess.run([*GPUPASS, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def ml_train():
        status = gpupass("status", uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "ml-train")

    assigned = gpupass("assign", uri, "ml-train", GPU, "--yes")
    assert assigned.returncode == 0, assigned.stdout + assigned.stderr
    with_gpu = model.to_dict()
    assert S.RECORD_BEGIN in model.vm("ml-train").notes

    def the_host_fails_part_of_it():
        if host_runs_it == "stopped-at-first-device":
            model.inject_fault("Remove-VMAssignableDevice")
        if host_runs_it == "stopped-after-removing-it":
            model.inject_fault("Mount-VMHostAssignableDevice")

    killed_with_script_held(ep, "Remove-VMAssignableDevice", ["release", uri, "ml-train", "--yes"], env,
                            while_held=the_host_fails_part_of_it)

    vm = ml_train()
    if host_runs_it == "whole":
        # exactly released: the device is the host's again, the settings are back and the record is gone
        assert vm["assigned"] == [] and vm["unfinished"] == [] and vm["stop_action"] != "TurnOff", vm
        assert S.RECORD_BEGIN not in model.vm("ml-train").notes
        assert model.to_dict() == original
        again = gpupass("release", uri, "ml-train", "--yes")
        assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout + again.stderr
        assert model.to_dict() == original                     # the record was consumed once: nothing restored twice
    elif host_runs_it == "stopped-after-removing-it":
        # partial, and said so: the device left the VM but is not the host's again, the settings are not back
        assert vm["assigned"] == [] and vm["stop_action"] == "TurnOff" and len(vm["unfinished"]) == 1, vm
        assert f"{GPU} is dismounted from the host and on no VM" in vm["unfinished"][0]
        assert "restore record is still in its notes" in vm["unfinished"][0]
        assert S.RECORD_BEGIN in model.vm("ml-train").notes
        assert "`gpupass release" in vm["unfinished"][0]                # ... and what finishes it:
        again = gpupass("release", uri, "ml-train", "--yes")
        assert again.returncode == 0, again.stdout + again.stderr
        assert model.to_dict() == original                      # the device the host's, settings restored, record gone
    else:
        # exactly as before: the device still on the VM, its settings and its record untouched
        assert vm["assigned"] == [GPU] and vm["unfinished"] == [] and vm["stop_action"] == "TurnOff", vm
        assert model.to_dict() == with_gpu
        again = gpupass("release", uri, "ml-train", "--yes")
        assert again.returncode == 0, again.stdout + again.stderr
        assert model.to_dict() == original
    assert ml_train()["assigned"] == []
