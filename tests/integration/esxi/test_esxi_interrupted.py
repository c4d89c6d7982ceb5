"""Ctrl-C in the middle of a multi-step assign on ESXi: a gpupass process sent SIGINT while its passthrough switch
(UpdatePassthruConfig, the second of three steps) waits at the vSphere simulator.

The simulator holds the call (its request is on the wire: vSphere would carry it out whatever the client does); the
client gets SIGINT there, as from a terminal's Ctrl-C. gpupass lets the step finish, undoes it and the intent record
written before it, and exits 130 saying the VM is as it was -- which the simulator's own state confirms: the device's
passthrough off again, the VM's configuration and extraConfig as before. (Hyper-V, one script:
tests/integration/hyperv/test_hyperv_interrupted.py; the core with a fake: tests/unit/test_service_interrupts.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from support.cli import GPUPASS, CtrlCClient

pytest.importorskip("pyVmomi")

T4 = "0000:d8:00.0"


def test_ctrl_c_mid_assign_lets_the_passthrough_switch_finish_undoes_every_step_and_exits_130(fresh_vcsim):
    sim = fresh_vcsim()
    uri = f"esxi://gpupass@127.0.0.1:{sim.port}/Lab"
    env = {**os.environ, "GPUPASS_PASSWORD": sim.password}

    def gpupass(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    def cad_ws() -> dict:
        status = gpupass("vms", uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return next(v for v in json.loads(status.stdout)["vms"] if v["name"] == "cad-ws")

    planned = gpupass("plan", uri, "cad-ws", T4, "--json")
    steps = json.loads(planned.stdout)["steps"]
    assert [s["action"] for s in steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"], planned.stdout
    vm_before, host_before = cad_ws(), sim.state()

    sim.hold("UpdatePassthruConfig")
    client = CtrlCClient(["assign", uri, "cad-ws", T4, "--yes", "--json", "--ca-file", str(sim.ca_file)], env)
    try:
        deadline = time.monotonic() + 60
        while sim.held() != "UpdatePassthruConfig":
            assert time.monotonic() < deadline and client.process.poll() is None, "the passthrough switch never came"
            time.sleep(0.05)
        client.ctrl_c()
    finally:
        sim.release()
    code, out, lines = client.finish()
    assert code == 130, (out, lines)
    document = json.loads(out)
    assert document["error"] == "interrupted" and document["rolled_back"] is True, document
    assert f"interrupted (Ctrl-C) after step '{steps[1]['description']}'" in document["message"], document
    assert "the 2 step(s) made were undone; VM 'cad-ws' is as it was" in document["message"], document
    assert not any("Traceback" in line for line in lines), lines
    assert sim.state() == host_before  # the device's passthrough switched off again
    assert cad_ws() == vm_before  # no device, no intent record left: status has nothing unfinished to say
