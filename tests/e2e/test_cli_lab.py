"""The CLI as a user runs it: a real process, the shipped lab host, state kept between commands."""

import json
import os
import pty
import subprocess
import sys

GPUPASS = [sys.executable, "-m", "gpupass.core.cli"]


def gpupass(*args, check=True):
    result = subprocess.run([*GPUPASS, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            env=os.environ.copy())
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_readme_demo_runs_the_whole_workflow():
    result = gpupass("lab", "demo")
    out = result.stdout
    for expected in ("$ gpupass gpus lab-kvm", "iommu-group-shared", "gpu-assigned-elsewhere",
                     "firmware-bios-large-bar", "Done: 0000:42:00.0 assigned to 'ml-train'",
                     "Nothing to do: the VM already holds these GPUs.",
                     "Done: 0000:42:00.0 released from 'ml-train'",
                     "Done: a nvidia-46 share of 0000:81:00.0 assigned to 'ml-train'",
                     "Done: a nvidia-46 share of 0000:81:00.0 released from 'ml-train'"):
        assert expected in out, expected
    # The demo ends with the lab as it started: nothing held but cad-ws's card.
    status = json.loads(gpupass("status", "lab-kvm", "--json").stdout)
    assert {g["address"]: g["assigned_to"] for g in status["gpus"]} == {
        "0000:00:02.0": None, "0000:01:00.0": "cad-ws", "0000:02:00.0": None, "0000:41:00.0": None,
        "0000:42:00.0": None, "0000:81:00.0": None}


def test_lab_state_persists_between_commands_and_reset_restores_it():
    gpupass("assign", "lab-kvm", "render01", "41:00.0", "--allow-firmware-change", "--yes")
    vms = {v["name"]: v for v in json.loads(gpupass("vms", "lab-kvm", "--json").stdout)["vms"]}
    assert vms["render01"]["assigned"] == ["0000:41:00.0"]
    assert vms["render01"]["firmware"] == "efi"
    assert vms["render01"]["mmio_window_bytes"] == 128 << 30
    gpupass("release", "lab-kvm", "render01", "--yes")
    vms = {v["name"]: v for v in json.loads(gpupass("vms", "lab-kvm", "--json").stdout)["vms"]}
    assert vms["render01"]["firmware"] == "bios" and vms["render01"]["mmio_window_bytes"] is None
    gpupass("assign", "lab-kvm", "ml-train", "42:00.0", "--yes")
    gpupass("lab", "reset")
    vms = {v["name"]: v for v in json.loads(gpupass("vms", "lab-kvm", "--json").stdout)["vms"]}
    assert vms["ml-train"]["assigned"] == []


def test_blocked_assign_exits_3_and_leaves_the_lab_alone():
    before = gpupass("vms", "lab-kvm", "--json").stdout
    result = gpupass("assign", "lab-kvm", "ml-train", "02:00.0", "--yes", check=False)
    assert result.returncode == 3
    assert gpupass("vms", "lab-kvm", "--json").stdout == before


def test_without_a_terminal_assign_refuses():
    result = gpupass("assign", "lab-kvm", "ml-train", "42:00.0", check=False)
    assert result.returncode == 2
    assert "--yes" in result.stderr


def _on_a_terminal(args, answer: bytes):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [*GPUPASS, *args])
    output = b""
    answered = False
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"Apply this plan?" in output:
            os.write(fd, answer)
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_on_a_terminal_assign_asks_and_no_means_no():
    code, output = _on_a_terminal(["assign", "lab-kvm", "ml-train", "42:00.0"], b"n\n")
    assert code == 2 and "not confirmed" in output
    vms = {v["name"]: v for v in json.loads(gpupass("vms", "lab-kvm", "--json").stdout)["vms"]}
    assert vms["ml-train"]["assigned"] == []
    code, output = _on_a_terminal(["assign", "lab-kvm", "ml-train", "42:00.0"], b"y\n")
    assert code == 0 and "Done: 0000:42:00.0 assigned" in output


def test_json_output_is_one_document_for_every_command():
    for args in (["plugins"], ["gpus", "lab-kvm"], ["vms", "lab-kvm"], ["status", "lab-kvm"], ["lab", "status"],
                 ["check", "lab-kvm", "ml-train", "42:00.0"], ["plan", "lab-kvm", "ml-train", "42:00.0"]):
        json.loads(gpupass(*args, "--json").stdout)
