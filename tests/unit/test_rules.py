"""The core's preflight rules on facts built with the fake platform's helpers."""

import dataclasses

import pytest

from gpupass.core.domain.inventory import PowerState
from gpupass.core.domain.mmio import GiB
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.plugins import collect, make_plugin_manager
from gpupass.core.service import build_context, make_plan, preflight
from support.fakes import A, FakeBackend, FakePlugin, facts, gpu, lab_facts, open_fake, vm


@pytest.fixture
def registry():
    return collect(make_plugin_manager([FakePlugin()], load_entry_points=False))


def codes(findings, severity=None):
    return sorted(f.code for f in findings if severity is None or f.severity.value == severity)


def check(registry, state, vm_name, *gpus, **options):
    backend = open_fake(state)
    request = AssignmentRequest(vm_name, tuple(A(g) for g in gpus), AssignOptions(**options))
    return preflight(build_context(backend, state, request), registry)


def test_a_free_isolated_gpu_for_an_off_efi_vm_has_no_blocker(registry):
    findings = check(registry, lab_facts(), "ml-train", "41:00.0")
    assert codes(findings, "blocker") == []
    assert "mmio-window-resized" in codes(findings)


def test_iommu_off_blocks(registry):
    state = dataclasses.replace(lab_facts(), host=dataclasses.replace(lab_facts().host, iommu_enabled=False))
    assert "iommu-off" in codes(check(registry, state, "ml-train", "41:00.0"), "blocker")


def test_unknown_iommu_state_warns(registry):
    state = dataclasses.replace(lab_facts(), host=dataclasses.replace(lab_facts().host, iommu_enabled=None))
    assert "iommu-unknown" in codes(check(registry, state, "ml-train", "41:00.0"), "warning")


def test_a_sata_controller_in_the_group_blocks_but_a_bridge_does_not(registry):
    findings = check(registry, lab_facts(), "ml-train", "02:00.0")
    shared = [f for f in findings if f.code == "iommu-group-shared"]
    assert len(shared) == 1 and "0000:00:17.0" in shared[0].message and "SATA" in shared[0].message
    # The RTX 4090's group also holds a PCIe root port: not a reason to refuse (release it from cad-ws first).
    state = lab_facts()
    state = dataclasses.replace(state, gpus=tuple(dataclasses.replace(g, assigned_to=None) for g in state.gpus))
    assert "iommu-group-shared" not in codes(check(registry, state, "ml-train", "01:00.0"))


def test_companions_go_along_and_leaving_them_behind_blocks(registry):
    state = lab_facts()
    state = dataclasses.replace(state, gpus=tuple(dataclasses.replace(g, assigned_to=None) for g in state.gpus))
    assert "companions-included" in codes(check(registry, state, "ml-train", "01:00.0"), "info")
    left = check(registry, state, "ml-train", "01:00.0", include_companions=False)
    assert "companion-left-behind" in codes(left, "blocker")


def test_gpu_of_another_vm_is_named_even_when_that_vm_is_off(registry):
    findings = check(registry, lab_facts(), "ml-train", "01:00.0")
    elsewhere = [f for f in findings if f.code == "gpu-assigned-elsewhere"]
    assert elsewhere and "'cad-ws' (off)" in elsewhere[0].message


def test_running_vm_blocks_unless_live_on_a_platform_that_can(registry):
    assert "vm-not-off" in codes(check(registry, lab_facts(), "web01", "41:00.0"), "blocker")


def test_bios_vm_with_large_bars_blocks_and_allowing_it_warns(registry):
    assert "firmware-bios-large-bar" in codes(check(registry, lab_facts(), "render01", "41:00.0"), "blocker")
    allowed = check(registry, lab_facts(), "render01", "41:00.0", allow_firmware_change=True)
    assert "firmware-change" in codes(allowed, "warning")
    assert codes(allowed, "blocker") == []


def test_bios_vm_with_small_bars_is_fine(registry):
    state = lab_facts()
    rtx = dataclasses.replace(state.gpus[1], assigned_to=None)
    state = dataclasses.replace(state, gpus=(state.gpus[0], rtx, state.gpus[2]))
    assert "firmware-bios-large-bar" not in codes(check(registry, state, "render01", "01:00.0"))


def test_unknown_bars_warn_and_a_user_size_replaces_them(registry):
    state = facts(gpus=[gpu("0000:05:00.0", bars=None)], vms=[vm("a")])
    assert "bar-size-unknown" in codes(check(registry, state, "a", "05:00.0"), "warning")
    sized = check(registry, state, "a", "05:00.0", bar_sizes={A("05:00.0"): 64 * GiB})
    assert "bar-size-unknown" not in codes(sized)
    assert "mmio-window-resized" in codes(sized)


def test_mmio_window_that_cannot_grow_blocks(registry, monkeypatch):
    from gpupass.core.domain.mmio import MmioPolicy

    monkeypatch.setattr(FakeBackend, "mmio_policy", MmioPolicy(default_window=32 * GiB, max_window=64 * GiB))
    findings = check(registry, lab_facts(), "ml-train", "41:00.0")
    assert "mmio-window-too-small" in codes(findings, "blocker")


def test_release_of_a_running_vm_blocks(registry):
    state = dataclasses.replace(lab_facts(), vms=tuple(
        dataclasses.replace(v, power_state=PowerState.RUNNING) if v.name == "cad-ws" else v for v in lab_facts().vms))
    backend = open_fake(state)
    plan = make_plan(backend, state, ReleaseRequest("cad-ws"), registry)
    assert plan.blocked and "vm-not-off" in codes(plan.findings)
    assert [str(g.address) for g in plan.gpus] == ["0000:01:00.0"]


def test_host_passthrough_switch_rules(registry, monkeypatch):
    from gpupass.core.domain.context import Capabilities
    from gpupass.core.domain.inventory import PassthroughState

    monkeypatch.setattr(FakeBackend, "capabilities", Capabilities(host_passthrough_switch=True))
    base = lab_facts()

    def with_state(state):
        gpus = tuple(dataclasses.replace(g, passthrough=state) if str(g.address) == "0000:41:00.0" else g
                     for g in base.gpus)
        return dataclasses.replace(base, gpus=gpus)

    pending = with_state(PassthroughState(capable=True, enabled=True, active=False))
    assert "host-reboot-required" in codes(check(registry, pending, "ml-train", "41:00.0"), "blocker")
    assert "host-reboot-required" in codes(check(registry, pending, "ml-train", "41:00.0", allow_host_reboot=True),
                                           "warning")
    incapable = with_state(PassthroughState(capable=False, reasons=("device is behind an RMRR",)))
    blocked = [f for f in check(registry, incapable, "ml-train", "41:00.0") if f.code == "gpu-not-passthrough-capable"]
    assert blocked and "RMRR" in blocked[0].message
    active = with_state(PassthroughState(capable=True, enabled=True, active=True))
    assert codes(check(registry, active, "ml-train", "41:00.0"), "blocker") == []
    at_once = with_state(PassthroughState(capable=True, enabled=False, active=False, activates_without_reboot=True))
    findings = check(registry, at_once, "ml-train", "41:00.0")
    assert codes(findings, "blocker") == [] and "host-passthrough-without-reboot" in codes(findings, "info")


def test_live_assignment_cannot_switch_firmware(registry, monkeypatch):
    from gpupass.core.domain.context import Capabilities
    from gpupass.core.domain.inventory import Firmware

    monkeypatch.setattr(FakeBackend, "capabilities", Capabilities(live_attach=True))
    state = lab_facts()
    state = dataclasses.replace(state, vms=tuple(
        dataclasses.replace(v, firmware=Firmware.BIOS, mmio_window_bytes=256 << 30) if v.name == "web01" else v
        for v in state.vms))
    findings = check(registry, state, "web01", "41:00.0", live=True, allow_firmware_change=True)
    assert "firmware-needs-restart" in codes(findings, "blocker")
    assert "live-change" in codes(findings, "warning")


def test_a_host_in_maintenance_mode_may_reboot(registry, monkeypatch):
    from gpupass.core.domain.context import Capabilities
    from gpupass.core.domain.inventory import PassthroughState

    monkeypatch.setattr(FakeBackend, "capabilities", Capabilities(host_passthrough_switch=True))
    base = lab_facts()
    gpus = tuple(dataclasses.replace(g, passthrough=PassthroughState(True, False, False)) for g in base.gpus)
    state = dataclasses.replace(base, gpus=gpus, maintenance={"": True})
    assert "host-reboot-required" in codes(check(registry, state, "ml-train", "41:00.0"), "warning")


def test_known_bars_still_size_the_window_when_another_card_is_unknown(registry):
    state = lab_facts()
    gpus = tuple(dataclasses.replace(g, assigned_to="ml-train") if str(g.address) == "0000:02:00.0" else g
                 for g in state.gpus)
    vms = tuple(dataclasses.replace(v, assigned=(A("02:00.0"), A("02:00.1"))) if v.name == "ml-train" else v
                for v in state.vms)
    findings = check(registry, dataclasses.replace(state, gpus=gpus, vms=vms), "ml-train", "41:00.0")
    assert "mmio-window-resized" in codes(findings, "info")


def test_every_bar_given_counts_so_an_l40s_is_not_sized_as_one_64g_bar(registry):
    """An L40S is 16M + 64G + 32M (issue 8): one 64G BAR would size the window at 64 GiB, half of what it needs."""
    from gpupass.core.domain.mmio import MiB
    from gpupass.core.service import build_context

    state = facts(gpus=[gpu("0000:05:00.0", bars=None)], vms=[vm("a")])
    backend = open_fake(state)
    whole = build_context(backend, state, AssignmentRequest(
        "a", (A("05:00.0"),), AssignOptions(bar_sizes={A("05:00.0"): (16 * MiB, 64 * GiB, 32 * MiB)})))
    one = build_context(backend, state, AssignmentRequest(
        "a", (A("05:00.0"),), AssignOptions(bar_sizes={A("05:00.0"): 64 * GiB})))
    assert whole.need.high == 128 * GiB and one.need.high == 64 * GiB
    assert backend.mmio_policy.window_for(whole.need) == 128 * GiB


def test_bar_sizes_must_be_positive():
    from gpupass.core.errors import UsageError

    with pytest.raises(UsageError):
        AssignOptions(bar_sizes={A("05:00.0"): ()})
