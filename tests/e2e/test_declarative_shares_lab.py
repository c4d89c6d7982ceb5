"""export, diff and apply carry shares (mdevs on KVM, GPU partitions on Hyper-V) beside whole GPUs."""

import json

from support.cli import gpupass


def _shares(host):
    return {(g["address"], s["holder"], s["type"]) for g in json.loads(gpupass("gpus", host, "--json").stdout)["gpus"]
            for s in g["sharing"]["shares"] if s["holder"]}


def test_kvm_add_a_share_export_round_trip_then_remove_it(tmp_path):
    held = _shares("lab-kvm")
    assert held  # the lab starts with a share given (vdi01's): export writes it and apply keeps it
    path = tmp_path / "gpus.yaml"
    gpupass("export", "lab-kvm", "-o", str(path))
    exported = path.read_text()
    assert gpupass("diff", str(path)).stdout.startswith("in sync")
    path.write_text(exported + '- host: lab-kvm\n  vm: ml-train\n  shares:\n    - {gpu: "81:00.0", type: GRID P40-1Q}\n')
    diff = json.loads(gpupass("diff", str(path), "--json", expect=5).stdout)
    assert [(c["operation"], c["vm"], c["gpus"], c["share"]) for c in diff["changes"]] == [
        ("assign", "ml-train", ["0000:81:00.0"], "GRID P40-1Q")]
    applied = json.loads(gpupass("apply", str(path), "--yes", "--json").stdout)
    assert applied["changed"] and [r["applied"] for r in applied["results"]] == [True]
    assert _shares("lab-kvm") == held | {("0000:81:00.0", "ml-train", "nvidia-46")}
    assert json.loads(gpupass("apply", str(path), "--yes", "--json").stdout)["changed"] is False

    # What export writes now applies as a no-op, shares included.
    again = tmp_path / "again.yaml"
    gpupass("export", "lab-kvm", "-o", str(again))
    assert 'vm: ml-train\n  shares:\n  - gpu: "0000:81:00.0"\n    type: "nvidia-46"' in again.read_text()
    assert gpupass("diff", str(again)).stdout.startswith("in sync")
    assert json.loads(gpupass("apply", str(again), "--yes", "--json").stdout) == {
        "file": str(again), "changed": False, "results": []}

    # The original file no longer lists ml-train: its share is given back, like a whole GPU of an unlisted VM.
    path.write_text(exported)
    diff = json.loads(gpupass("diff", str(path), "--json", expect=5).stdout)
    assert [(c["operation"], c["vm"], c["gpus"], c["share"], c["reason"]) for c in diff["changes"]] == [
        ("release", "ml-train", ["0000:81:00.0"], "nvidia-46", "not in the file")]
    assert "- lab-kvm: release a nvidia-46 share of 0000:81:00.0 from ml-train" in gpupass(
        "diff", str(path), expect=5).stdout
    gpupass("apply", str(path), "--yes")
    assert _shares("lab-kvm") == held
    assert gpupass("diff", str(path)).stdout.startswith("in sync")


def test_an_impossible_share_is_refused_before_any_write(tmp_path):
    before = gpupass("status", "lab-kvm", "--json").stdout
    path = tmp_path / "bad.yaml"
    # A valid release (cad-ws is not listed) beside a share type the P40 does not offer: nothing may change.
    path.write_text("assignments:\n"
                    '  - {host: lab-kvm, vm: ml-train, shares: [{gpu: "81:00.0", type: A100-4C}]}\n')
    result = gpupass("apply", str(path), "--yes", expect=2)
    assert f"{path}:2: GPU 0000:81:00.0 on lab-kvm offers no share type 'A100-4C'" in result.stderr
    assert "nvidia-46" in result.stderr  # the fix names the types it offers
    # A GPU given whole and shared in one file.
    path.write_text("assignments:\n"
                    '  - {host: lab-kvm, vm: ml-train, gpus: ["81:00.0"]}\n'
                    '  - {host: lab-kvm, vm: web01, shares: [{gpu: "81:00.0", type: nvidia-46}]}\n')
    result = gpupass("apply", str(path), "--yes", expect=2)
    assert "given whole to 'ml-train' (line 2) and shared with 'web01'" in result.stderr
    assert gpupass("status", "lab-kvm", "--json").stdout == before



def test_esxi_vgpu_profiles_round_trip_then_a_file_adds_and_removes_one(labs, tmp_path):
    held = _shares("lab-esxi")
    assert ("0000:3b:00.0", "vdi01", "grid_p40-2b") in held  # lab-esxi's vdi01 runs a vGPU
    path = tmp_path / "gpus.yaml"
    gpupass("export", "lab-esxi", "-o", str(path))
    exported = path.read_text()
    assert 'vm: vdi01\n  shares:\n  - gpu: "0000:3b:00.0"\n    type: "grid_p40-2b"' in exported
    assert json.loads(gpupass("apply", str(path), "--yes", "--json").stdout)["changed"] is False
    path.write_text(exported + '- host: lab-esxi\n  vm: infer01\n  shares: [{gpu: "af:00.0", type: P40-4C}]\n')
    applied = json.loads(gpupass("apply", str(path), "--yes", "--json").stdout)
    assert [(r["operation"], r["vm"], r["share"], r["applied"]) for r in applied["results"]] == [
        ("assign", "infer01", "P40-4C", True)]
    assert _shares("lab-esxi") == held | {("0000:af:00.0", "infer01", "grid_p40-4c")}
    assert gpupass("diff", str(path)).stdout.startswith("in sync")
    # The first P40 runs 2B profiles, one type per GPU: a 4C there is refused before anything is written.
    path.write_text(exported + '- host: lab-esxi\n  vm: infer01\n  shares: [{gpu: "3b:00.0", type: P40-4C}]\n')
    result = gpupass("apply", str(path), "--yes", expect=2)
    assert "one type at a time and would hold grid_p40-2b, grid_p40-4c" in result.stderr
    assert _shares("lab-esxi") == held | {("0000:af:00.0", "infer01", "grid_p40-4c")}
    path.write_text(exported)
    gpupass("apply", str(path), "--yes")
    assert _shares("lab-esxi") == held


def test_lab_hyperv_export_apply_round_trip_is_a_no_op_with_a_partition_held(labs, tmp_path):
    held = _shares("lab-hyperv")
    assert {holder for _, holder, _ in held} == {"web01"}  # lab-hyperv's web01 holds a GPU partition
    path = tmp_path / "gpus.yaml"
    gpupass("export", "lab-hyperv", "-o", str(path))
    assert "vm: web01\n  shares:\n" in path.read_text()
    assert gpupass("diff", str(path)).stdout.startswith("in sync")
    assert json.loads(gpupass("apply", str(path), "--yes", "--json").stdout) == {
        "file": str(path), "changed": False, "results": []}
    assert _shares("lab-hyperv") == held
