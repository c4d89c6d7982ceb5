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


def test_a_plan_shown_first_is_applied_as_it_was_with_every_bar_given():
    with open_host("lab-kvm") as host:
        plan = host.plan("render01", "41:00.0", allow_firmware_change=True, bar_sizes={"41:00.0": "16M+64G+32M"})
        assert plan.mmio is not None and plan.mmio.need.total_bars == (16 << 20) + (64 << 30) + (32 << 20)
        outcome = host.apply(plan)
        assert [str(a) for a in outcome.facts_after.find_vm("render01").assigned] == ["0000:41:00.0"]
        assert host.apply(host.plan_release("render01")).facts_after.find_vm("render01").assigned == ()


def test_a_password_given_to_open_host_is_used_instead_of_the_environment(monkeypatch):
    from support.cli import gpupass as cli

    from gpupass.core import paths
    from gpupass.core.plugins import default_registry

    cli("lab", "up", "lab-esxi")
    try:
        lab = default_registry().lab_host("lab-esxi").target(paths.data_dir())
        monkeypatch.setenv("GPUPASS_PASSWORD", "not-the-password")
        with pytest.raises(gpupass.AuthenticationFailed):
            open_host(lab.uri, ca_file=lab.tls.ca_file).inventory()
        with open_host(lab.uri, ca_file=lab.tls.ca_file, password=lab.password.reveal()) as host:
            assert host.platform == "esxi" and host.inventory().gpus
    finally:
        cli("lab", "down", "lab-esxi")
