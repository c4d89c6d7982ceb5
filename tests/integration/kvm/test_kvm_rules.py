"""The KVM-only preflight rules, on facts read from libvirt's test driver (plus the one input it cannot give)."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.lab import testhost  # noqa: E402
from gpupass.backends.kvm.rules import RULES  # noqa: E402
from gpupass.core.domain.pci import PciAddress  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest  # noqa: E402
from gpupass.core.service import build_context, make_plan  # noqa: E402

A = PciAddress.parse


@pytest.fixture
def backend(tmp_path, open_backend):
    functions = [testhost.gpu("0000:41:00.0", 0x20F1, "GA100 [A100 PCIe 40GB]", group=20),
                 testhost.gpu("0000:42:00.0", 0x1EB8, "TU104GL [Tesla T4]", group=21)]
    domains = [testhost.domain("old-pc", machine="pc-i440fx-7.2"), testhost.domain("modern")]
    return open_backend(testhost.write_host(tmp_path / "rules.xml", functions, domains))


def codes(plan) -> set[str]:
    return {finding.code for finding in plan.findings}


def test_kvm_rules_are_registered_for_kvm_assignments(registry):
    for rule in RULES:
        assert rule in registry.rules_for("assign", "kvm")
        assert rule not in registry.rules_for("assign", "esxi")
        assert rule not in registry.rules_for("release", "kvm")


def test_large_bar_gpu_on_i440fx_warns_about_the_machine_type(backend, registry):
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("old-pc", (A("41:00.0"),)), registry)
    assert "kvm-machine-type" in codes(plan) and not plan.blocked
    modern = make_plan(backend, backend.inventory(), AssignmentRequest("modern", (A("41:00.0"),)), registry)
    assert "kvm-machine-type" not in codes(modern)
    small = make_plan(backend, backend.inventory(), AssignmentRequest("old-pc", (A("42:00.0"),)), registry)
    assert "kvm-machine-type" not in codes(small)  # 256 MiB of BARs is fine on i440fx


def test_host_driver_and_boot_vga_findings(backend, registry):
    """The test driver drops <driver> and is not this machine's sysfs, so those two inputs are set here."""
    facts = backend.inventory()
    t4 = next(gpu for gpu in facts.gpus if gpu.address == A("42:00.0"))
    t4 = dataclasses.replace(t4, function=dataclasses.replace(t4.function, driver="nvidia"),
                             extra={"boot_vga": True})
    facts = dataclasses.replace(facts, gpus=tuple(t4 if g.address == t4.address else g for g in facts.gpus))
    ctx = build_context(backend, facts, AssignmentRequest("modern", (A("42:00.0"),)))
    found = {finding.code: finding for rule in RULES for finding in rule(ctx)}
    assert found["kvm-host-driver"].subject == "0000:42:00.0" and "nvidia" in found["kvm-host-driver"].message
    assert found["kvm-boot-vga"].severity.value == "warning"
    vfio = dataclasses.replace(t4, function=dataclasses.replace(t4.function, driver="vfio-pci"), extra={})
    facts = dataclasses.replace(facts, gpus=tuple(vfio if g.address == t4.address else g for g in facts.gpus))
    ctx = build_context(backend, facts, AssignmentRequest("modern", (A("42:00.0"),)))
    assert [finding for rule in RULES for finding in rule(ctx)] == []


def _group_host(tmp_path, open_backend, *members):
    """One GPU (+audio) in IOMMU group 4 with the given other members, as libvirt's test driver serves it."""
    functions = [testhost.gpu("0000:10:00.0", 0x2204, "GA102 [GeForce RTX 3090]", group=4, class_code=0x030000),
                 testhost.audio("0000:10:00.1", 0x1AEF, group=4), *members]
    return open_backend(testhost.write_host(tmp_path / "group.xml", functions, [testhost.domain("vm")]))


@pytest.mark.parametrize("member, blocked", [
    # AMD Zen: a driver-less "PCIe Dummy Host Bridge" (class 0600h) next to the GPU is fine (vfio_dev_viable).
    (testhost.Function("0000:00:08.0", 0x1022, 0x1452, 0x060000, "Family 17h PCIe Dummy Host Bridge",
                       "AMD", None, 4), False),
    (testhost.Function("0000:00:08.1", 0x1022, 0x15DB, 0x060400, "Internal PCIe GPP Bridge", "AMD", "pcieport", 4),
     False),
    (testhost.Function("0000:39:00.0", 0x1022, 0x7901, 0x010601, "FCH SATA Controller", "AMD", None, 4), False),
    (testhost.Function("0000:39:00.0", 0x1022, 0x7901, 0x010601, "FCH SATA Controller", "AMD", "pci-stub", 4),
     False),
    (testhost.Function("0000:39:00.0", 0x1022, 0x7901, 0x010601, "FCH SATA Controller", "AMD", "ahci", 4), True),
])
def test_group_members_are_judged_by_the_kernels_rule(tmp_path, open_backend, registry, member, blocked):
    backend = _group_host(tmp_path, open_backend, member)
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("vm", (A("10:00.0"),)), registry)
    shared = [f for f in plan.findings if f.code == "iommu-group-shared"]
    assert bool(shared) is blocked
    if blocked:
        assert "bound to ahci" in shared[0].message and "unbind ahci" in shared[0].remedy


def _eight_a100_host(tmp_path, open_backend, cpu_xml: str | None):
    """Eight A100 PCIe 80GB (128 GiB BAR1 each, from the catalog): a 2 TiB 64-bit window."""
    import xml.etree.ElementTree as ET

    functions = [testhost.gpu(f"0000:{0x10 + i:02x}:00.0", 0x20B5, "GA100 [A100 PCIe 80GB]", group=30 + i)
                 for i in range(8)]
    vm = testhost.domain("trainer", memory_mib=512 * 1024)
    if cpu_xml:
        vm.insert(4, ET.fromstring(cpu_xml))
    return open_backend(testhost.write_host(tmp_path / "eight.xml", functions, [vm]))


@pytest.mark.parametrize("cpu_xml, verdict", [
    (None, "blocker"),  # QEMU's default 40 bits: "phys-bits too low (40)"
    ("<cpu mode='custom'><model>EPYC</model><maxphysaddr mode='emulate' bits='40'/></cpu>", "blocker"),
    ("<cpu mode='custom'><model>EPYC</model><maxphysaddr mode='emulate' bits='46'/></cpu>", None),
    ("<cpu mode='host-passthrough'><maxphysaddr mode='passthrough'/></cpu>", None),
])
def test_eight_large_bar_gpus_need_more_physical_address_bits(tmp_path, open_backend, registry, cpu_xml, verdict):
    backend = _eight_a100_host(tmp_path, open_backend, cpu_xml)
    gpus = tuple(A(f"{0x10 + i:02x}:00.0") for i in range(8))
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("trainer", gpus), registry)
    found = [f for f in plan.findings if f.code == "kvm-phys-bits"]
    if verdict is None:
        assert found == []
    else:
        assert found[0].severity.value == verdict and plan.blocked
        assert "phys-bits too low (40)" in found[0].message and "2 TiB" in found[0].message
        assert "<maxphysaddr mode='passthrough'/>" in found[0].remedy


def test_one_gpu_in_a_small_vm_fits_in_40_bits(backend, registry):
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("modern", (A("41:00.0"),)), registry)
    assert "kvm-phys-bits" not in codes(plan)
