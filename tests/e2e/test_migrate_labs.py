"""migrate plan for all six ordered pairs of platforms, on the three lab hosts (real endpoints behind each)."""

import json

import pytest

from support.cli import gpupass

SOURCES = {"lab-esxi": "cad-ws", "lab-kvm": "ml-train", "lab-hyperv": "cad-ws"}
# (source, destination) -> how the source VM's GPU is matched there
EXPECTED = {
    ("lab-esxi", "lab-kvm"): "same-family",      # H100 SXM5 -> H100 PCIe
    ("lab-esxi", "lab-hyperv"): None,            # no Hopper GPU on the Hyper-V lab
    ("lab-kvm", "lab-esxi"): "same-family",      # A100 40GB -> A100 80GB
    ("lab-kvm", "lab-hyperv"): "same-family",
    ("lab-hyperv", "lab-kvm"): "same-family",    # A100 80GB -> A100 40GB
    ("lab-hyperv", "lab-esxi"): "same-model",
}
PLATFORM = {"lab-esxi": "esxi", "lab-kvm": "kvm", "lab-hyperv": "hyperv"}


def test_six_ordered_pairs(labs):
    # The KVM lab's only A100 is free while KVM is a destination, then given to ml-train to be a source.
    kvm_source_ready = False
    for source, destination in sorted(EXPECTED, key=lambda pair: pair[0] == "lab-kvm"):
        match = EXPECTED[(source, destination)]
        if source == "lab-kvm" and not kvm_source_ready:
            gpupass("assign", "lab-kvm", "ml-train", "41:00.0", "--yes")
            kvm_source_ready = True
        args = ["migrate", "plan", source, SOURCES[source], destination, "--dst-vm", "moved", "--json"]
        result = gpupass(*args, expect=3 if match is None else 0)
        plan = json.loads(result.stdout)
        assert plan["source"]["platform"] == PLATFORM[source]
        assert plan["destination"]["platform"] == PLATFORM[destination] and not plan["destination"]["vm_exists"]
        assert [g["match"] for g in plan["gpus"]] == [match], (source, destination)
        assert plan["not_done_by_gpupass"] and len(plan["settings"]) == 7
        if match is None:
            assert "migrate-no-equivalent" in [f["code"] for f in plan["findings"]]
            assert plan["destination_plan"] is None
        else:
            dest_plan = plan["destination_plan"]
            assert dest_plan["platform"] == PLATFORM[destination] and dest_plan["vm"] == "moved"
            assert dest_plan["steps"] and not dest_plan["blocked"], (source, destination, dest_plan["findings"])
            if match == "same-family":
                assert "migrate-family-substitute" in [f["code"] for f in plan["findings"]]



@pytest.mark.parametrize("lab,gpu", [("lab-esxi", "3b:00.0"), ("lab-kvm", "42:00.0"),
                                     ("lab-hyperv", "PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)")])
def test_a_snapshot_of_each_lab_plans_checks_and_takes_a_migration_like_the_lab(labs, tmp_path, lab, gpu):
    """The issue's case: `snapshot lab-esxi -o s.json` then `plan s.json ml-train 3b:00.0` (was a KeyError)."""
    path = tmp_path / "s.json"
    gpupass("snapshot", lab, "-o", str(path))
    live = json.loads(gpupass("plan", lab, "ml-train", gpu, "--json").stdout)
    offline = json.loads(gpupass("plan", str(path), "ml-train", gpu, "--json").stdout)
    assert offline["steps"] == live["steps"] and offline["steps"]
    assert [f["code"] for f in offline["findings"]] == [f["code"] for f in live["findings"]]
    assert gpupass("check", str(path), "ml-train", gpu, expect=None).returncode == \
        gpupass("check", lab, "ml-train", gpu, expect=None).returncode
    source = "lab-kvm" if lab != "lab-kvm" else "lab-hyperv"
    if source == "lab-kvm":
        gpupass("assign", "lab-kvm", "ml-train", "41:00.0", "--yes")
    into_snapshot = gpupass("migrate", "plan", source, SOURCES[source], str(path), "--dst-vm", "moved", "--json",
                            expect=None)
    into_lab = gpupass("migrate", "plan", source, SOURCES[source], lab, "--dst-vm", "moved", "--json", expect=None)
    assert into_snapshot.returncode == into_lab.returncode in (0, 3), into_snapshot.stdout + into_snapshot.stderr
    planned, expected = json.loads(into_snapshot.stdout), json.loads(into_lab.stdout)
    assert planned["destination"]["platform"] == PLATFORM[lab]
    assert (planned["destination_plan"] or {}).get("steps") == (expected["destination_plan"] or {}).get("steps")
