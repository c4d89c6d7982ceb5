"""A snapshot taken from a live host plans exactly like the live host, and refuses to change anything."""

import json

from support.cli import gpupass


def without_host_label(plan):
    plan = dict(plan)
    plan.pop("host")
    return plan


def test_plan_from_a_snapshot_equals_plan_from_live(tmp_path):
    path = tmp_path / "lab-kvm.json"
    gpupass("snapshot", "lab-kvm", "-o", str(path))
    for args, code in ((["ml-train", "0000:42:00.0", "--hide-hypervisor"], 0), (["render01", "41:00.0"], 3),
                       (["render01", "41:00.0", "--allow-firmware-change"], 0), (["ml-train", "01:00.0"], 3)):
        live = json.loads(gpupass("plan", "lab-kvm", *args, "--json", expect=code).stdout)
        offline = json.loads(gpupass("plan", str(path), *args, "--json", expect=code).stdout)
        assert without_host_label(offline) == without_host_label(live)
        assert "snapshot" in offline["host"]
    assert json.loads(gpupass("gpus", str(path), "--json").stdout)["gpus"] == \
        json.loads(gpupass("gpus", "lab-kvm", "--json").stdout)["gpus"]


def test_a_snapshot_cannot_be_changed(tmp_path):
    path = tmp_path / "lab-kvm.json"
    gpupass("snapshot", "lab-kvm", "-o", str(path))
    before = path.read_text()
    result = gpupass("assign", str(path), "ml-train", "42:00.0", "--yes", expect=1)
    assert "is a snapshot" in result.stderr
    assert path.read_text() == before


def test_a_file_that_is_not_a_snapshot_is_a_usage_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("{}")
    result = gpupass("gpus", str(path), expect=2)
    assert "not a gpupass snapshot" in result.stderr
