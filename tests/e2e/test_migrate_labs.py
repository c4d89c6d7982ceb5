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


@pytest.fixture
def labs():
    gpupass("lab", "up")
    try:
        yield
    finally:
        gpupass("lab", "down")


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
