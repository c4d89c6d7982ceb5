"""Help pages an admin can act on: examples everywhere, what HOST and GPU may be, remedies with the real host,
one JSON document with --json even for usage errors."""

import json

import click
from click.testing import CliRunner

from gpupass.core.cli.main import _fill_in_host, cli
from gpupass.core.cli.reference import _walk
from gpupass.core.errors import NotFound
from support.fakes import FakeBackend, facts, gpu, vm


def leaf_commands():
    for path, command, ctx in _walk(cli, ["gpupass"], None):
        if not isinstance(command, click.Group):
            yield " ".join(path), command.get_help(ctx)


def test_every_command_has_examples():
    missing = [name for name, text in leaf_commands() if "Examples:" not in text]
    assert not missing, missing


def test_help_says_what_a_gpu_and_a_host_may_be():
    helps = dict(leaf_commands())
    for name in ("gpupass check", "gpupass plan", "gpupass assign", "gpupass release"):
        text = " ".join(helps[name].split())
        assert "vendor:device" in text and "model's words" in text and "pci_0000_41_00_0" in text, name
        assert "LocationPath" in text and "esx02.example.com/0000:3b:00.0" in text
    assert "LIBVIRT_DEFAULT_URI" in " ".join(helps["gpupass gpus"].split())
    assert "--show-scripts" in helps["gpupass assign"] and "--show-scripts" in helps["gpupass plan"]


def test_remedies_name_the_host_the_user_typed():
    error = NotFound("gone", remedy="run `gpupass status HOST`; `gpupass vms HOST` / `gpupass gpus HOST` list them")
    _fill_in_host(error, {"host": "lab-kvm"})
    assert error.remedy == "run `gpupass status lab-kvm`; `gpupass vms lab-kvm` / `gpupass gpus lab-kvm` list them"
    quoted = NotFound("gone", remedy="run `gpupass status HOST`")
    _fill_in_host(quoted, {"host": "a host; rm -rf"})
    assert quoted.remedy == "run `gpupass status 'a host; rm -rf'`"


def test_a_rule_remedy_names_the_host(fake_host):
    FakeBackend.state = facts([gpu("01:00.0", owner="cad-ws")], [vm("cad-ws", assigned=["01:00.0"]), vm("ml-train")])
    result = CliRunner().invoke(cli, ["check", "fake://lab", "ml-train", "01:00.0", "--json"])
    finding = next(f for f in json.loads(result.output)["findings"] if f["code"] == "gpu-assigned-elsewhere")
    assert finding["remedy"] == "release it first: gpupass release fake://lab 'cad-ws' 0000:01:00.0"


def test_usage_errors_are_json_with_json():
    from gpupass.core.cli.main import main

    runner = CliRunner()
    result = runner.invoke(click.Command("x", callback=lambda: main(["check", "lab-kvm", "--json"])), [])
    assert result.exit_code == 2
    document = json.loads(result.output)
    assert document["error"] == "usage" and "Missing argument 'VM'" in document["message"]
