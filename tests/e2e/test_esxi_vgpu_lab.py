"""lab-esxi's vGPU host (esx03, two Tesla P40 in shared direct mode) through the command line: list, check, plan,
assign, find across the fleet and release a vGPU share, with --json."""

import json

from support.cli import gpupass

P40_A, P40_B = "esx03.lab.local/0000:3b:00.0", "esx03.lab.local/0000:af:00.0"


def run(*args, expect=0):
    return json.loads(gpupass(*args, "--json", expect=expect).stdout)


def test_a_vgpu_share_listed_checked_found_assigned_and_released(labs):
    gpus = run("gpus", "lab-esxi")["gpus"]
    second = next(g for g in gpus if g["location"] == "esx03.lab.local" and g["address"] == "0000:af:00.0")
    assert second["sharing"]["modes"] == ["vgpu-profile"]
    assert {t["id"]: t["available"] for t in second["sharing"]["types"]}["grid_p40-4c"] == 6
    found = run("fleet", "find", "--profile", "P40-4C", "--hosts", "lab-esxi")
    # the first P40 runs a 2B (one profile per GPU): only the second has room
    assert [(r["gpu"], r["free"]) for r in found["capacity"] if r["free"]] == [("0000:af:00.0", 6)]
    checked = run("check", "lab-esxi", "infer01", P40_B, "--share", "GRID P40-4C")
    assert not [f for f in checked["findings"] if f["severity"] == "blocker"]
    assert "esxi-vgpu-placement" in {f["code"] for f in checked["findings"]}
    mixed = run("check", "lab-esxi", "infer01", P40_A, "--share", "P40-4C", expect=3)
    assert "share-type-mixed" in {f["code"] for f in mixed["findings"] if f["severity"] == "blocker"}
    gpupass("assign", "lab-esxi", "infer01", P40_B, "--share", "grid_p40-4c", "--yes")
    again = run("plan", "lab-esxi", "infer01", P40_B, "--share", "grid_p40-4c")
    assert again["steps"] == []  # idempotent
    held = run("gpus", "lab-esxi")["gpus"]
    second = next(g for g in held if g["location"] == "esx03.lab.local" and g["address"] == "0000:af:00.0")
    assert {s["holder"] for s in second["sharing"]["shares"]} >= {"infer01"}
    gpupass("release", "lab-esxi", "infer01", P40_B, "--yes")
    gone = run("gpus", "lab-esxi")["gpus"]
    second = next(g for g in gone if g["location"] == "esx03.lab.local" and g["address"] == "0000:af:00.0")
    assert "infer01" not in {s["holder"] for s in second["sharing"]["shares"]}



def test_migrate_plan_maps_a_kvm_vgpu_to_an_esxi_profile_and_back(labs):
    # lab-kvm's vdi01 holds a GRID P40-1Q mediated device, whose framebuffer libvirt does not report; lab-esxi's
    # P40s offer no 1Q (the real P40 output lists B and C types): a profile with room, its size not comparable
    to_esxi = run("migrate", "plan", "lab-kvm", "vdi01", "lab-esxi", "--dst-vm", "infer01")
    (share,) = to_esxi["shares"]
    assert (share["source_type"], share["destination_mode"], share["match"]) == (
        "nvidia-46", "vgpu-profile", "size-unknown")
    assert share["destination_type"].startswith("grid_p40-")
    assert "migrate-share-size-unknown" in {f["code"] for f in to_esxi["findings"]}
    destination = to_esxi["destination_plan"]
    assert destination["operation"] == "assign-share" and not destination["blocked"]
    assert [s["action"] for s in destination["steps"]] == ["esxi.vgpu"]
    # lab-esxi's vdi01 runs a grid_p40-2b vGPU; lab-kvm's P40 holds 1Q devices (one type per GPU), so its 2B has no
    # room and the 1Q type is the one with room
    to_kvm = run("migrate", "plan", "lab-esxi", "vdi01", "lab-kvm", "--dst-vm", "render01")
    (share,) = to_kvm["shares"]
    assert (share["source_type"], share["source_mode"], share["destination_type"], share["match"]) == (
        "grid_p40-2b", "vgpu-profile", "nvidia-46", "size-unknown")
    assert [s["action"] for s in to_kvm["destination_plan"]["steps"]] == ["kvm.define-domain"]
