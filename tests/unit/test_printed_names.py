"""Names from a host never act on the terminal: human output escapes them, JSON keeps them exact."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

from gpupass.core.cli.escape import shown
from gpupass.core.cli.main import cli
from support.fakes import A, FakeBackend, lab_facts

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\r\u202ename\x9b"
RAW = ["\x1b", "\x07", "\r", "\u202e", "\x9b"]


@pytest.fixture
def run(fake_host):
    state = lab_facts()
    vms = tuple(dataclasses.replace(v, name=HOSTILE) if v.name == "cad-ws" else v for v in state.vms)
    gpus = tuple(dataclasses.replace(g, assigned_to=HOSTILE, model="A\x1b[8mhidden") if g.assigned_to == "cad-ws"
                 else g for g in state.gpus)
    fake_host(dataclasses.replace(state, vms=vms, gpus=gpus))
    runner = CliRunner()
    # color=True: click strips nothing, so any raw sequence would reach the test as it would reach a terminal.
    return lambda *args: runner.invoke(cli, list(args), color=True, catch_exceptions=False)


def test_shown_escapes_controls_and_keeps_text():
    assert shown("ml-train ä 名前") == "ml-train ä 名前"
    assert shown(HOSTILE) == "evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\u202ename\\x9b"
    assert shown("a\nb\tc", multiline=True) == "a\nb\tc" and shown("a\nb") == "a\\nb"


@pytest.mark.parametrize("args", [
    ["gpus", "fake://lab"], ["vms", "fake://lab"], ["status", "fake://lab"],
    ["plan", "fake://lab", HOSTILE, "41:00.0"], ["check", "fake://lab", HOSTILE, "41:00.0"],
    ["release", "fake://lab", HOSTILE, "--yes"], ["plan", "fake://lab", "ml-train", "01:00.0"],
    ["plan", "fake://lab", "no\x1b[2Jsuch", "41:00.0"],
])
def test_human_output_escapes_every_name(run, args):
    result = run(*args)
    text = result.output
    for raw in RAW[1:]:
        assert raw not in text, (raw, text)
    # The only escape sequences left are the colours gpupass itself adds (SGR: ESC [ ... m).
    import re
    assert not re.search(r"\x1b(?!\[[0-9;]*m)", text), text
    assert "\\x1b" in text


def test_json_keeps_the_name_exact(run):
    document = json.loads(run("vms", "fake://lab", "--json").output)
    assert HOSTILE in [vm["name"] for vm in document["vms"]]
    gpus = json.loads(run("gpus", "fake://lab", "--json").output)["gpus"]
    assert next(g for g in gpus if g["address"] == str(A("01:00.0")))["assigned_to"] == HOSTILE
    assert FakeBackend.state.find_vm(HOSTILE) is not None
