"""export, diff and apply against the lab: apply converges and a second apply changes nothing."""

import json

from support.cli import gpupass


def test_apply_converges_and_is_idempotent(tmp_path):
    path = tmp_path / "gpus.yaml"
    gpupass("export", "lab-kvm", "-o", str(path))
    assert gpupass("diff", str(path)).stdout.startswith("in sync")
    path.write_text(path.read_text().replace("vm: cad-ws", "vm: ml-train").replace("0000:01:00.0", "0000:42:00.0")
                    + "- host: lab-kvm\n  vm: render01\n  model: A100\n  count: 1\n"
                      "  options: {allow_firmware_change: true}\n")
    diff = json.loads(gpupass("diff", str(path), "--json", expect=5).stdout)
    assert [(c["operation"], c["vm"], c["gpus"]) for c in diff["changes"]] == [
        ("release", "cad-ws", ["0000:01:00.0"]), ("assign", "ml-train", ["0000:42:00.0"]),
        ("assign", "render01", ["0000:41:00.0"])]
    gpupass("apply", str(path), expect=2)  # no terminal, no --yes
    applied = json.loads(gpupass("apply", str(path), "--yes", "--json").stdout)
    assert applied["changed"] and all(r["applied"] for r in applied["results"])
    again = json.loads(gpupass("apply", str(path), "--yes", "--json").stdout)
    assert again == {"file": str(path), "changed": False, "results": []}
    assert json.loads(gpupass("diff", str(path), "--json").stdout)["in_sync"] is True
    owners = {g["address"]: g["assigned_to"] for g in json.loads(gpupass("gpus", "lab-kvm", "--json").stdout)["gpus"]}
    assert owners == {"0000:00:02.0": None, "0000:01:00.0": None, "0000:02:00.0": None, "0000:41:00.0": "render01",
                      "0000:42:00.0": "ml-train", "0000:81:00.0": None}


def test_a_blocked_change_stops_with_exit_3(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("assignments:\n  - {host: lab-kvm, vm: cad-ws, gpus: [\"01:00.0\"]}\n"
                    "  - {host: lab-kvm, vm: render01, gpus: [\"41:00.0\"]}\n")
    result = gpupass("apply", str(path), "--yes", expect=3)
    assert "firmware-bios-large-bar" in result.stdout
