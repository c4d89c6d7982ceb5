"""Ctrl-C in the middle of an assign on Hyper-V: a gpupass process sent SIGINT while its script waits at the endpoint.

The endpoint holds the assign script's Command unanswered (its request is on the wire: a real host would run it
whatever the client does next); the client gets SIGINT there, as from a terminal's Ctrl-C. gpupass lets the step
finish, undoes it with the release script, and exits 130 with a JSON document saying the VM is as it was -- which
the host model confirms to the last setting. (The same on the core with a fake backend, partial undo and a second
Ctrl-C included: tests/unit/test_service_interrupts.py.)"""
from __future__ import annotations

import json
import os

from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.lab.hostmodel import lab_host
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from hyperv_helpers import PASSWORD, USER
from support.cli import CtrlCClient

GPU = str(address_map([A100_2_LOC])[A100_2_LOC])


def _interrupted_with_script_held(ep, args: list[str], env: dict[str, str]) -> tuple[int, str, list[str]]:
    """Run `gpupass ARGS`, send it SIGINT while its Add-VMAssignableDevice script is held at the endpoint, wait until
    it says it noticed (on stderr), then let the script through: -> exit code, stdout, stderr lines."""
    ep.hold_next_command(containing="Add-VMAssignableDevice")
    client = CtrlCClient(args, env)
    try:
        assert ep.command_held.wait(60), "the assign script never reached the endpoint"
        client.ctrl_c()
        assert not ep.command_done.is_set()
    finally:
        ep.release_command()
    return client.finish()


def test_ctrl_c_mid_assign_lets_the_script_finish_undoes_it_and_exits_130(endpoint_factory):
    model = lab_host()
    before = model.to_dict()
    ep = endpoint_factory(model, "ntlm")
    uri = f"hyperv+http://{USER}@127.0.0.1:{ep.port}/"
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}
    code, out, err = _interrupted_with_script_held(ep, ["assign", uri, "ml-train", GPU, "--yes", "--json"], env)
    assert code == 130, (out, err)
    document = json.loads(out)
    assert document["error"] == "interrupted" and document["rolled_back"] is True, document
    assert "interrupted (Ctrl-C) after step 'give " in document["message"]
    assert "the 1 step(s) made were undone; VM 'ml-train' is as it was" in document["message"], document
    assert "run the same command again" in document["remedy"]
    assert ep.command_done.is_set()  # the held script ran: the undo came after it, not before
    assert model.to_dict() == before  # device, settings, notes: exactly as before
    assert not any("Traceback" in line for line in err), err


def test_ctrl_c_mid_assign_in_text_says_what_the_host_holds(endpoint_factory):
    model = lab_host()
    before = model.to_dict()
    ep = endpoint_factory(model, "basic")
    uri = f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}
    code, out, err = _interrupted_with_script_held(ep, ["assign", uri, "ml-train", GPU, "--yes"], env)
    text = "".join(err)
    assert code == 130, (out, text)
    assert "error: interrupted (Ctrl-C) after step" in text and "is as it was" in text, text
    assert "fix: run the same command again" in text
    assert model.to_dict() == before
