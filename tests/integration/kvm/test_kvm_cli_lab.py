"""The CLI on KVM test-driver hosts (--json), and the lab host's persistence across separate opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpupass.backends.kvm.lab.host import KvmLab
from gpupass.core import paths
from gpupass.core.cli.main import cli
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan

A = PciAddress.parse
H100 = "0000:42:00.0"


def run(*args: str, code: int = 0) -> dict:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args and result.stdout.strip() else {}


def test_gpus_json_on_a_host_file(lab_file):
    document = run("gpus", f"test://{lab_file}", "--json")
    assert document["host"]["iommu_enabled"] is True
    by_address = {gpu["address"]: gpu for gpu in document["gpus"]}
    assert by_address["0000:01:00.0"]["assigned_to"] == "cad-ws"
    assert by_address["0000:01:00.0"]["companions"] == ["0000:01:00.1"]
    assert by_address[H100]["iommu_group"] == 21 and by_address[H100]["device_id"] == "2331"


def test_cli_assign_release_round_trip_on_the_lab(open_backend, domain_xml):
    before = domain_xml(open_backend(KvmLab().target(paths.data_dir()).uri), "ml-train")

    plan = run("plan", "lab-kvm", "ml-train", H100, "--json")
    assert not plan["blocked"] and not plan["nothing_to_do"]
    assert [step["action"] for step in plan["steps"]] == ["kvm.define-domain", "kvm.managed-binding"]
    assert "+    <hostdev mode=\"subsystem\" type=\"pci\" managed=\"yes\">" in plan["steps"][0]["preview"]

    first = run("assign", "lab-kvm", "ml-train", H100, "--yes", "--json")
    assert first["applied"] and first["changed"] and first["vm"]["assigned"] == [H100]

    second = run("assign", "lab-kvm", "ml-train", H100, "--yes", "--json")
    assert second["applied"] is False and second["changed"] is False
    assert second["plan"]["nothing_to_do"] and not any(step["writes"] for step in second["plan"]["steps"])

    status = run("status", "lab-kvm", "--json")
    assert {vm["name"]: vm["assigned"] for vm in status["vms"]}["ml-train"] == [H100]

    released = run("release", "lab-kvm", "ml-train", "--yes", "--json")
    assert released["changed"] and released["vm"]["assigned"] == []
    # A fresh open of the persisted lab file sees the definition exactly as before the assign.
    assert domain_xml(open_backend(KvmLab().target(paths.data_dir()).uri), "ml-train") == before


def test_cli_blocked_and_not_found_exit_codes(lab_file):
    blocked = run("assign", f"test://{lab_file}", "web01", H100, "--yes", "--json", code=3)
    assert blocked["applied"] is False and "vm-not-off" in {f["code"] for f in blocked["plan"]["findings"]}
    missing = run("plan", f"test://{lab_file}", "nope", H100, "--json", code=2)
    assert missing["error"] == "not-found"


def test_assign_without_yes_and_without_a_terminal_changes_nothing(lab_file):
    result = CliRunner().invoke(cli, ["assign", f"test://{lab_file}", "ml-train", H100])
    assert result.exit_code == 2 and "--yes" in result.output


def test_lab_state_persists_across_separate_backend_opens(open_backend, registry):
    lab = KvmLab()
    target = lab.target(paths.data_dir())
    assert target.options["persist_test_state"] is True
    first = open_backend(target.uri, persist_test_state=True)
    execute(first, make_plan(first, first.inventory(), AssignmentRequest("ml-train", (A(H100),)), registry))
    first.close()

    second = open_backend(target.uri, persist_test_state=True)
    facts = second.inventory()
    assert facts.find_vm("ml-train").assigned == (A(H100),)
    assert {vm.name: vm.power_state.value for vm in facts.vms} == {
        "cad-ws": "off", "ml-train": "off", "render01": "off", "vdi01": "off", "web01": "running"}
    execute(second, make_plan(second, facts, ReleaseRequest("ml-train"), registry))
    second.close()

    third = open_backend(target.uri)
    assert third.inventory().find_vm("ml-train").assigned == ()


def test_without_persist_option_a_change_lives_only_in_that_connection(lab_file, open_backend, registry):
    first = open_backend(lab_file)
    execute(first, make_plan(first, first.inventory(), AssignmentRequest("ml-train", (A(H100),)), registry))
    assert first.inventory().find_vm("ml-train").assigned == (A(H100),)
    assert open_backend(lab_file).inventory().find_vm("ml-train").assigned == ()


def test_lab_reset_restores_the_shipped_host(open_backend):
    run("assign", "lab-kvm", "ml-train", H100, "--yes", "--json")
    lab_path = KvmLab().path(paths.data_dir())
    assert "gpupass:assignment" in lab_path.read_text()
    assert run("lab", "reset", "lab-kvm", "--json") == {"reset": ["lab-kvm"]}
    assert "gpupass:assignment" not in lab_path.read_text()
    assert open_backend(lab_path).inventory().find_vm("ml-train").assigned == ()


def test_the_installed_command_runs_the_lab_in_a_subprocess(tmp_path):
    executable = Path(sys.executable).with_name("gpupass")
    assert executable.exists(), f"no gpupass console script next to {sys.executable}: install the package (pip install -e .)"
    env = {**os.environ, "GPUPASS_DATA_DIR": str(tmp_path / "data"), "GPUPASS_CONFIG": str(tmp_path / "c.toml")}
    done = subprocess.run([str(executable), "assign", "lab-kvm", "ml-train", H100, "--yes", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["vm"]["assigned"] == [H100]
    again = subprocess.run([str(executable), "vms", "lab-kvm", "--json"], capture_output=True, text=True, env=env,
                           timeout=60)
    assert {vm["name"]: vm["assigned"] for vm in json.loads(again.stdout)["vms"]}["ml-train"] == [H100]


def test_persisted_state_keeps_hostile_names_and_run_states(tmp_path, open_backend, registry):
    from gpupass.backends.kvm.lab import testhost

    names = ["q'\"<&>]]>", "ünï—名前", "x" * 1100]
    uri = testhost.write_host(tmp_path / "h.xml", [testhost.gpu("0000:42:00.0", 0x2331, "GH100", 21)],
                              [testhost.domain(n) for n in names] + [testhost.domain("up", running=True)])
    for name in names:
        backend = open_backend(uri, persist_test_state=True)
        execute(backend, make_plan(backend, backend.inventory(), AssignmentRequest(name, (A(H100),)), registry))
        facts = open_backend(uri).inventory()
        assert facts.find_vm(name).assigned == (A(H100),)
        assert sorted(vm.name for vm in facts.vms) == sorted([*names, "up"])
        assert facts.find_vm("up").power_state.value == "running" and facts.find_vm(name).is_off
        backend = open_backend(uri, persist_test_state=True)
        execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest(name), registry))
    assert not any(vm.assigned for vm in open_backend(uri).inventory().vms)


def test_the_guard_sees_a_change_another_process_persisted_to_the_lab(open_backend, registry):
    """Two gpupass runs on the lab: each connection loads the file once, so the guard must re-read it."""
    uri = KvmLab().target(paths.data_dir()).uri
    first = open_backend(uri, persist_test_state=True)
    plan = make_plan(first, first.inventory(), AssignmentRequest("ml-train", (A(H100),)), registry)

    second = open_backend(uri, persist_test_state=True)
    execute(second, make_plan(second, second.inventory(), AssignmentRequest("ml-train", (A("41:00.0"),)), registry))

    with pytest.raises(OperationFailed) as caught:
        execute(first, plan)
    assert "changed by someone else" in caught.value.__cause__.message
    assert open_backend(uri).inventory().find_vm("ml-train").assigned == (A("41:00.0"),)


def test_a_persisted_definition_reloads_byte_identical(open_backend, registry, domain_xml):
    uri = KvmLab().target(paths.data_dir()).uri
    writer = open_backend(uri, persist_test_state=True)
    execute(writer, make_plan(writer, writer.inventory(),
                              AssignmentRequest("render01", (A("41:00.0"),), AssignOptions(
                                  allow_firmware_change=True, hide_hypervisor=True)), registry))
    assert "gpupass:assignment" in domain_xml(writer, "render01")
    assert domain_xml(open_backend(uri), "render01") == domain_xml(writer, "render01")
