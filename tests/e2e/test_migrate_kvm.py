"""migrate plan/apply between two real libvirt test-driver hosts (the lab and a copy of it)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

GPUPASS = [sys.executable, "-m", "gpupass.core.cli"]
LAB = Path(__file__).resolve().parents[2] / "backends" / "kvm" / "lab" / "lab-kvm.xml"


def gpupass(*args, expect=0):
    result = subprocess.run([*GPUPASS, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def test_plan_for_a_vm_not_yet_converted_then_apply_once_it_exists(tmp_path):
    gpupass("assign", "lab-kvm", "cad-ws", "--yes", "0000:42:00.0")
    destination = tmp_path / "dst.xml"
    shutil.copy(LAB, destination)
    uri = f"test://{destination}"
    plan = json.loads(gpupass("migrate", "plan", "lab-kvm", "cad-ws", uri, "--dst-vm", "cad-new", "--json",
                              expect=3).stdout)
    # cad-ws holds the RTX 4090 (+audio) and the H100; at the destination the 4090 is held by its own cad-ws.
    by_source = {g["source"]: g for g in plan["gpus"]}
    assert by_source["0000:42:00.0"]["destination"] == "0000:42:00.0"
    assert by_source["0000:01:00.0"]["destination"] is None
    assert "migrate-no-equivalent" in [f["code"] for f in plan["findings"]]
    assert plan["not_done_by_gpupass"]

    gpupass("release", "lab-kvm", "cad-ws", "01:00.0", "--yes")
    plan = json.loads(gpupass("migrate", "plan", "lab-kvm", "cad-ws", uri, "--dst-vm", "ml-train", "--json").stdout)
    assert plan["destination"]["vm_exists"] is True and plan["blocked"] is False
    result = json.loads(gpupass("migrate", "apply", "lab-kvm", "cad-ws", uri, "--dst-vm", "ml-train",
                                "--release-source", "--yes", "--json").stdout)
    assert result["destination"]["applied"] is True and result["source_release"]["applied"] is True
    assert result["destination"]["vm"]["assigned"] == ["0000:42:00.0"]
    status = json.loads(gpupass("status", "lab-kvm", "--json").stdout)
    assert [g["assigned_to"] for g in status["gpus"] if g["address"] == "0000:42:00.0"] == [None]
