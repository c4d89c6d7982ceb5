"""A gpupass process killed (SIGKILL) in the middle of an assign on Hyper-V: its script already on the wire.

The endpoint holds the assign script's Command unanswered; the client process is killed; the host then runs the
script it was sent (as Windows runs a command whose client vanished). The host is exactly after the change --
device, settings and the restore record in the VM's notes, all from one script -- `gpupass status` says so, the
same assign run again has nothing to do, and a release gives the VM back exactly as it was."""
from __future__ import annotations

import json
import os
import subprocess

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.lab.hostmodel import lab_host
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from hyperv_helpers import PASSWORD, USER
from support.cli import GPUPASS, killed_with_script_held

GPU = str(address_map([A100_2_LOC])[A100_2_LOC])


def test_a_client_killed_with_its_assign_on_the_wire_leaves_the_host_after_and_a_rerun_converges(endpoint_factory):
    model = lab_host()
    before = model.to_dict()
    ep = endpoint_factory(model, "ntlm")
    uri = f"hyperv+http://{USER}@127.0.0.1:{ep.port}/"
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}

    def gpupass(*args):
        return subprocess.run([*GPUPASS, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    killed_with_script_held(ep, "Add-VMAssignableDevice", ["assign", uri, "ml-train", GPU, "--yes"], env)
    status = json.loads(gpupass("status", uri, "--json").stdout)
    vm = next(v for v in status["vms"] if v["name"] == "ml-train")
    assert GPU in vm["assigned"] and vm["stop_action"] == "TurnOff"         # exactly after: the whole script ran
    assert S.RECORD_BEGIN in model.vm("ml-train").notes                       # with its restore record
    again = gpupass("assign", uri, "ml-train", GPU, "--yes")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout + again.stderr
    released = gpupass("release", uri, "ml-train", "--yes")
    assert released.returncode == 0, released.stdout + released.stderr
    assert model.to_dict() == before
