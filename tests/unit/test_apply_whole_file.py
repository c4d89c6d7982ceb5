"""`apply` plans the whole file before its first write, and a failure half-way says exactly what changed."""

import json

import pytest
from click.testing import CliRunner

from gpupass.core.cli.main import cli
from support.fakes import A, FakeBackend


@pytest.fixture
def apply(fake_host, tmp_path):
    runner = CliRunner()

    def invoke(text, *args):
        path = tmp_path / "gpus.yaml"
        path.write_text(text)
        return runner.invoke(cli, ["apply", str(path), "--yes", *args], catch_exceptions=False)

    return invoke


def owners():
    return {str(g.address): g.assigned_to for g in FakeBackend.state.gpus}


def writes():
    return [call for call in FakeBackend.calls if call[0] == "apply"]


BEFORE = {"0000:41:00.0": None, "0000:01:00.0": "cad-ws", "0000:02:00.0": None}


def test_one_gpu_for_two_vms_is_refused_before_any_write(apply):
    # checked on each VM's machine, so after the host is read (a vCenter repeats addresses across its ESXi hosts)
    result = apply("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n"
                   "  - {host: fake://lab, vm: web01, gpus: [\"0000:41:00.0\"]}\n")
    assert result.exit_code == 2
    assert "GPU 0000:41:00.0 on fake://lab is given to both 'ml-train' (line 2) and 'web01'" in result.output
    assert writes() == [] and owners() == BEFORE


def test_a_blocked_later_change_stops_the_file_before_the_first_write(apply):
    # cad-ws is not listed, so its GPU is released first; render01 (BIOS) cannot take the 64 GiB A100.
    text = "assignments:\n  - {host: fake://lab, vm: render01, gpus: [\"41:00.0\"]}\n"
    result = apply(text)
    assert result.exit_code == 3
    assert "firmware-bios-large-bar" in result.output and "nothing was changed" in result.output
    assert writes() == [] and owners() == BEFORE
    document = json.loads(apply(text, "--json").output)
    assert document["changed"] is False and [b["vm"] for b in document["blocked"]] == ["render01"]
    assert writes() == [] and owners() == BEFORE


def test_a_gpu_the_file_moves_between_vms_is_planned_as_freed(apply):
    result = apply("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"01:00.0\"]}\n", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["changed"] is True
    assert owners() == {**BEFORE, "0000:01:00.0": "ml-train"}


def test_a_file_the_host_cannot_meet_is_refused_before_any_write(apply):
    # cad-ws keeps its card and the other one shares its IOMMU group: no free "Fake GPU" is left for ml-train.
    result = apply("assignments:\n  - {host: fake://lab, vm: cad-ws, gpus: [\"01:00.0\"]}\n"
                   "  - {host: fake://lab, vm: ml-train, model: Fake GPU, count: 1}\n")
    assert result.exit_code == 3 and "has 0 free Fake GPU GPU(s), ml-train needs 1 more" in result.output
    assert "nothing was changed" in result.output and writes() == [] and owners() == BEFORE


def test_a_count_larger_than_the_host_has_is_a_usage_error_naming_the_line(apply):
    text = "assignments:\n  - {host: fake://lab, vm: ml-train, model: Fake GPU, count: 9999}\n"
    result = apply(text)
    assert result.exit_code == 2, result.output
    assert "<file>" not in result.output and ":2: count 9999 asks for more Fake GPU GPUs than fake://lab has (2)" \
        in result.output and "lower count to at most 2" in result.output
    document = json.loads(apply(text, "--json").output)
    assert document["error"] == "usage" and "count 9999" in document["message"]
    assert writes() == [] and owners() == BEFORE


def test_too_few_free_gpus_is_a_blocker_in_json_too(apply):
    document = json.loads(apply("assignments:\n  - {host: fake://lab, vm: cad-ws, gpus: [\"01:00.0\"]}\n"
                                "  - {host: fake://lab, vm: ml-train, model: Fake GPU, count: 1}\n", "--json").output)
    assert document["error"] == "preflight-failed" and "needs 1 more" in document["message"]


def test_a_failure_after_a_change_reports_exactly_what_was_changed(apply):
    FakeBackend.fail_on = {"fake.attach"}
    text = "assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n"
    result = apply(text)
    assert result.exit_code == 1
    assert "nothing was changed" not in result.output
    assert "apply stopped at change 2 of 2" in result.output and "that change was undone" in result.output
    assert "changed before it (1):\n  - fake://lab: release 0000:01:00.0 from cad-ws" in result.output
    assert owners() == {**BEFORE, "0000:01:00.0": None}

    FakeBackend.fail_on = {"fake.attach"}
    text = ("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n"
            "  - {host: fake://lab, vm: render01, gpus: [\"01:00.0\"]}\n")
    FakeBackend.state = _with_owner("0000:01:00.0", "cad-ws")
    document = json.loads(apply(text, "--json").output)
    assert document["error"] == "apply-incomplete" and document["changed"] is True
    assert [(r["operation"], r["vm"]) for r in document["results"]] == [("release", "cad-ws")]
    assert (document["failed"]["vm"], document["failed"]["error"]["rolled_back"]) == ("ml-train", True)
    assert [(c["operation"], c["vm"]) for c in document["not_done"]] == [("assign", "render01")]


def test_a_first_change_that_fails_is_reported_as_that_change_alone(apply):
    FakeBackend.fail_on = {"fake.attach"}
    result = apply("assignments:\n  - {host: fake://lab, vm: cad-ws, gpus: [\"01:00.0\", \"41:00.0\"]}\n", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["error"] == "operation-failed"
    assert owners() == BEFORE


def _with_owner(address, vm_name):
    import dataclasses

    state = FakeBackend.state
    gpus = tuple(dataclasses.replace(g, assigned_to=vm_name) if g.address == A(address) else g for g in state.gpus)
    vms = tuple(dataclasses.replace(v, assigned=(A("01:00.0"), A("01:00.1"))) if v.name == vm_name else v
                for v in state.vms)
    return dataclasses.replace(state, gpus=gpus, vms=vms)


def test_one_host_spelled_two_ways_is_one_host(apply):
    """`fake://lab` and `FAKE://Lab/` are one host: one GPU given to a VM under each spelling is refused as one GPU
    for two VMs, and a consistent file is read and planned once per host."""
    result = apply("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n"
                   "  - {host: FAKE://Lab/, vm: web01, gpus: [\"0000:41:00.0\"]}\n")
    assert result.exit_code == 2, result.output
    assert "GPU 0000:41:00.0 on fake://lab is given to both 'ml-train' (line 2) and 'web01'" in result.output
    assert writes() == [] and owners() == BEFORE
    FakeBackend.calls.clear()  # the refused file read the host once (the check needs each VM's machine)
    result = apply("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n"
                   "  - {host: fake://lab/, vm: cad-ws, gpus: [\"01:00.0\"]}\n", "--json")
    assert result.exit_code == 0, result.output
    first_write = next(i for i, call in enumerate(FakeBackend.calls) if call[0] == "apply")
    # the host read once to plan the whole file (not once per spelling), and once more before its change
    assert [c[0] for c in FakeBackend.calls[:first_write]].count("inventory") == 2
    assert owners()["0000:41:00.0"] == "ml-train"
    assert [(r["host"], r["vm"]) for r in json.loads(result.output)["results"]] == [("fake://lab", "ml-train")]


def test_apply_asks_like_assign_and_refuses_without_a_terminal(fake_host, tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n")
    result = CliRunner().invoke(cli, ["apply", str(path)], input="n\n")
    # the same confirmation as assign/release (commands.confirm): no terminal here, so a refusal, exit 2
    assert result.exit_code == 2 and "refusing to change hosts without confirmation" in result.output
    assert writes() == [] and owners() == BEFORE
    # each change is carried out the way assign and release carry out theirs (commands.run_plan), saying so
    result = CliRunner().invoke(cli, ["apply", str(path), "--yes"])
    assert result.exit_code == 0, result.output
    assert "Done: 0000:01:00.0 released from 'cad-ws'." in result.output
    assert "Done: 0000:41:00.0 assigned to 'ml-train'." in result.output


@pytest.mark.parametrize("one,other", [
    ("hyperv+http://admin@127.0.0.1/", "hyperv+http://Other@LOCALHOST:5985"),
    ("hyperv://admin@hv01.example", "hyperv://admin@HV01.example:5986/?transport=kerberos"),
    ("esxi://a@vc.example/Lab", "esxi://b@VC.EXAMPLE:443/Lab/"),
    ("qemu+tcp://kvm01/system", "qemu+tcp://kvm01:16509/system"),
    ("qemu+ssh://root@kvm01/system", "qemu+ssh://kvm01:22/system/"),
])
def test_host_identity_is_one_for_every_spelling_of_a_host(one, other):
    from gpupass.core import plugins
    from gpupass.core.config import Config
    from gpupass.core.hosts import host_identity

    registry = plugins.default_registry()
    assert host_identity(one, Config(), registry) == host_identity(other, Config(), registry)


@pytest.mark.parametrize("one,other", [
    ("qemu:///system", "qemu:///session"),
    ("hyperv://hv01.example", "hyperv+http://hv01.example"),           # 5986 and 5985: two endpoints
    ("esxi://vc.example/Lab", "esxi://vc.example/Prod"),
    ("qemu+tcp://kvm01/system", "qemu+tcp://kvm02/system"),
])
def test_host_identity_tells_different_hosts_apart(one, other):
    from gpupass.core import plugins
    from gpupass.core.config import Config
    from gpupass.core.hosts import host_identity

    registry = plugins.default_registry()
    assert host_identity(one, Config(), registry) != host_identity(other, Config(), registry)


def test_ctrl_c_during_a_later_change_exits_130_and_reports_what_was_changed(apply, monkeypatch):
    """SIGINT to this process inside the second change's last step (CliRunner runs the command in the main thread,
    where the core notes a Ctrl-C and undoes the change under way: tests/unit/test_service_interrupts.py)."""
    import os
    import signal

    real = FakeBackend.apply

    def apply_step(self, step):
        result = real(self, step)
        if step.action == "fake.attach":
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(FakeBackend, "apply", apply_step)
    result = apply("assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n", "--json")
    assert result.exit_code == 130, result.output
    document = json.loads(result.output)
    assert document["error"] == "apply-incomplete" and document["failed"]["error"]["error"] == "interrupted"
    assert document["failed"]["error"]["rolled_back"] is True
    assert "apply stopped at change 2 of 2" in document["message"] and "that change was undone" in document["message"]
    assert owners() == {**BEFORE, "0000:01:00.0": None}  # the release made before it stays; the assign was undone


ONE_MOVE = "assignments:\n  - {host: fake://lab, vm: ml-train, gpus: [\"41:00.0\"]}\n"  # release cad-ws's, then assign


def test_ctrl_c_while_the_next_change_reads_its_host_reports_it_not_begun_and_what_was_changed(apply, monkeypatch):
    """SIGINT outside any step (the second change re-reads the host), so no core guard holds it: apply itself says
    what the host holds, as it does for a Ctrl-C during a step."""
    import os
    import signal

    real = FakeBackend.inventory
    reads = []

    def inventory(self):
        reads.append(1)
        if len(reads) == 4:  # the file's plan, the release's re-read and read-back, then the assign's re-read
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(FakeBackend, "inventory", inventory)
    result = apply(ONE_MOVE, "--json")
    assert result.exit_code == 130, result.output
    document = json.loads(result.output)
    assert document["error"] == "apply-incomplete" and document["failed"]["vm"] == "ml-train"
    assert document["failed"]["error"]["error"] == "interrupted" and document["failed"]["error"]["rolled_back"] is True
    assert "before the first step of + fake://lab: assign 0000:41:00.0 to ml-train" in document["message"]
    assert "that change was not begun" in document["message"]
    assert [r["vm"] for r in document["results"]] == ["cad-ws"]
    assert owners() == {**BEFORE, "0000:01:00.0": None}  # the release stays; nothing of the assign was written


def test_ctrl_c_between_a_changes_steps_and_its_result_counts_the_change_as_made(apply, monkeypatch):
    from gpupass.core.cli import declarative

    real = declarative._run_change

    def run_change(app, change, as_json, stage):
        result = real(app, change, as_json, stage)
        if change.operation == "release":
            raise KeyboardInterrupt  # the result reached apply's stage record, not yet its list
        return result

    monkeypatch.setattr(declarative, "_run_change", run_change)
    result = apply(ONE_MOVE, "--json")
    assert result.exit_code == 130, result.output
    document = json.loads(result.output)
    assert [r["vm"] for r in document["results"]] == ["cad-ws"] and document["failed"]["vm"] == "ml-train"
    assert "that change was not begun" in document["message"]
    assert owners() == {**BEFORE, "0000:01:00.0": None}


def test_ctrl_c_after_the_last_changes_steps_still_reports_the_file_applied(apply, monkeypatch):
    from gpupass.core.cli import declarative

    real = declarative._run_change

    def run_change(app, change, as_json, stage):
        real(app, change, as_json, stage)
        if change.operation == "assign":
            raise KeyboardInterrupt
        return stage.result

    monkeypatch.setattr(declarative, "_run_change", run_change)
    result = apply(ONE_MOVE, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["changed"] is True and [r["vm"] for r in document["results"]] == ["cad-ws", "ml-train"]
    assert owners() == {**BEFORE, "0000:01:00.0": None, "0000:41:00.0": "ml-train"}


def test_ctrl_c_inside_run_plan_outside_the_steps_says_whether_it_was_made_is_not_known(apply, monkeypatch):
    """A Ctrl-C while the 'Done' line is printed (after the core's steps, before apply has the result)."""
    from gpupass.core.cli import commands

    real = commands.run_plan

    def run_plan(backend, plan, as_json):
        result = real(backend, plan, as_json)
        if plan.operation == "assign":
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(commands, "run_plan", run_plan)
    result = apply(ONE_MOVE)
    assert result.exit_code == 130, result.output
    assert "whether that change was made is not known" in result.output
    assert "gpupass diff" in result.output and "that change was NOT fully undone" in result.output
    assert owners() == {**BEFORE, "0000:01:00.0": None, "0000:41:00.0": "ml-train"}  # it was, in fact, made
