"""The CLI against the fake platform: output forms, exit codes, refusal without a terminal."""

import json

import pytest

from gpupass.core.domain.pci import PciAddress
from click.testing import CliRunner

from gpupass.core.cli.main import cli
from support.fakes import FakeBackend


@pytest.fixture
def run(fake_host):
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def test_gpus_json_carries_the_contract_keys(run):
    result = run("gpus", "fake://lab", "--json")
    assert result.exit_code == 0
    gpus = json.loads(result.output)["gpus"]
    a100 = next(g for g in gpus if g["address"] == "0000:41:00.0")
    for key in ("address", "vendor_id", "device_id", "name", "iommu_group", "companions", "bars", "mmio_bytes",
                "assigned_to"):
        assert key in a100
    rtx = next(g for g in gpus if g["address"] == "0000:01:00.0")
    assert rtx["companions"] == ["0000:01:00.1"] and rtx["assigned_to"] == "cad-ws"


def test_gpus_table(run):
    result = run("gpus", "fake://lab")
    assert result.exit_code == 0
    assert "0000:41:00.0" in result.output and "cad-ws" in result.output


def test_check_exit_codes(run):
    assert run("check", "fake://lab", "ml-train", "41:00.0").exit_code == 0
    blocked = run("check", "fake://lab", "ml-train", "02:00.0", "--json")
    assert blocked.exit_code == 3
    document = json.loads(blocked.output)
    assert document["blocked"] is True
    assert {"code", "severity", "message", "remedy"} <= set(document["findings"][0])


def test_plan_json_and_blocked_plan_exit_code(run):
    result = run("plan", "fake://lab", "ml-train", "41:00.0", "--json")
    assert result.exit_code == 0
    plan = json.loads(result.output)
    assert [s["action"] for s in plan["steps"]] == ["fake.reserve", "fake.attach"]
    assert plan["steps"][1]["needs_vm_off"] is True and plan["features_lost"][0]["feature"] == "teleportation"
    assert run("plan", "fake://lab", "render01", "41:00.0").exit_code == 3


def test_assign_without_terminal_or_yes_refuses_and_changes_nothing(run):
    result = run("assign", "fake://lab", "ml-train", "41:00.0")
    assert result.exit_code == 2
    assert "--yes" in result.output
    assert not [c for c in FakeBackend.calls if c[0] == "apply"]


def test_assign_yes_json_then_release(run):
    result = run("assign", "fake://lab", "ml-train", "41:00.0", "--yes", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["applied"] and document["vm"]["assigned"] == ["0000:41:00.0"]
    again = json.loads(run("assign", "fake://lab", "ml-train", "41:00.0", "--yes", "--json").output)
    assert again["changed"] is False
    released = run("release", "fake://lab", "ml-train", "--yes", "--json")
    assert json.loads(released.output)["vm"]["assigned"] == []


def test_blocked_assign_exits_3_and_changes_nothing(run):
    result = run("assign", "fake://lab", "ml-train", "02:00.0", "--yes")
    assert result.exit_code == 3
    assert "iommu-group-shared" in result.output
    assert not [c for c in FakeBackend.calls if c[0] == "apply"]


def test_failed_step_is_rolled_back_and_exits_1(run):
    FakeBackend.fail_on = {"fake.attach"}
    result = run("assign", "fake://lab", "ml-train", "41:00.0", "--yes", "--json")
    assert result.exit_code == 1
    error = json.loads(result.output[result.output.index("{"):])
    assert error["error"] == "operation-failed" and error["rolled_back"] is True


@pytest.mark.parametrize("args, code, text", [
    (("gpus", "nowhere"), 2, "unknown host 'nowhere'"),
    (("gpus", "vmware://x"), 1, "no backend handles URIs of scheme 'vmware://'"),
    (("check", "fake://lab", "ml-train", "41:00"), 2, "is not a PCI address"),
    (("check", "fake://lab", "nobody", "41:00.0"), 2, "no VM named 'nobody'"),
    (("check", "fake://lab", "ml-train", "41:00.0", "--live"), 1, "not supported on fake"),
    (("check", "fake://lab", "ml-train", "41:00.0", "--bar-size", "41:00.0"), 2, "has no '='"),
])
def test_errors_name_the_problem_and_the_fix(run, args, code, text):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "fix:" in result.output


def test_bar_size_takes_every_bar_joined_or_repeated():
    from gpupass.core.cli.options import build_assignment
    from gpupass.core.domain.mmio import GiB, MiB

    flags = dict(no_companions=False, allow_firmware_change=False, hide_hypervisor=False, live=False, dynamic=False,
                 allow_host_reboot=False)
    joined = build_assignment("vm", ("41:00.0",), bar_sizes=("41:00.0=16M+64G+32M",), **flags)
    repeated = build_assignment("vm", ("41:00.0",), bar_sizes=("41:00.0=16M", "0000:41:00.0=64G,32M"), **flags)
    expected = {PciAddress.parse("41:00.0"): (16 * MiB, 64 * GiB, 32 * MiB)}
    assert joined.options.bar_sizes == expected == repeated.options.bar_sizes


def test_error_as_json(run):
    result = run("check", "fake://lab", "nobody", "41:00.0", "--json")
    assert result.exit_code == 2
    assert json.loads(result.output) == {"error": "not-found", "message": "no VM named 'nobody' on fake://lab",
                                         "remedy": "names are case-sensitive; `gpupass vms fake://lab` lists them"}


def test_help_lists_exit_codes():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for line in ("0  done", "1  error", "2  usage", "3  preflight found blocking problems"):
        assert line in result.output
