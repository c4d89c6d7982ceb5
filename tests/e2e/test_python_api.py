"""The documented Python API (docs/api.md) against the KVM lab: open, inventory, check, plan, assign, release."""

import pytest

import gpupass
from gpupass import PreflightFailed, open_host


def test_the_documented_workflow_on_the_kvm_lab():
    assert gpupass.__version__ and gpupass.__version__[0].isdigit()
    with open_host("lab-kvm") as host:
        assert host.name == "lab-kvm" and host.platform == "kvm"
        facts = host.inventory()
        assert "0000:42:00.0" in {str(g.address) for g in facts.gpus}
        assert not [f for f in host.check("ml-train", "H100") if f.blocks]
        blocked = host.check("ml-train", "02:00.0")
        assert "iommu-group-shared" in {f.code for f in blocked if f.blocks}
        plan = host.plan("ml-train", "pci_0000_42_00_0")
        assert plan.steps and not plan.blocked
        outcome = host.assign("ml-train", "10de:2331")
        assert str(outcome.facts_after.find_vm("ml-train").assigned[0]) == "0000:42:00.0"
        with pytest.raises(PreflightFailed):
            host.assign("ml-train", "02:00.0")
        released = host.release("ml-train")
        assert released.facts_after.find_vm("ml-train").assigned == ()


def test_api_errors_are_the_documented_classes():
    with pytest.raises(gpupass.NotFound):
        open_host("no-such-host")
    with open_host("lab-kvm") as host:
        with pytest.raises(gpupass.NotFound, match="no VM named"):
            host.plan("nobody", "H100")
        with pytest.raises(gpupass.UsageError, match="unknown option"):
            host.plan("ml-train", "H100", allow_everything=True)
