"""Migration plans between two fake platforms: equivalents, settings that carry, the destination's plan."""

import dataclasses

import pytest

from gpupass.core.domain.inventory import PowerState
from gpupass.core.ports import Backend

from gpupass.core.migration import plan_migration
from gpupass.core.plugins import collect, make_plugin_manager
from support.fakes import FakePlugin, facts, gpu, lab_facts, open_fake, open_other_fake, vm


@pytest.fixture
def registry():
    return collect(make_plugin_manager([FakePlugin()], load_entry_points=False))


def source_with_a100():
    state = lab_facts()
    gpus = tuple(dataclasses.replace(g, assigned_to="ml-train") if str(g.address) == "0000:41:00.0" else g
                 for g in state.gpus)
    vms = tuple(dataclasses.replace(v, assigned=(gpus[0].address,)) if v.name == "ml-train" else v
                for v in state.vms)
    return dataclasses.replace(state, gpus=gpus, vms=vms)


def test_same_model_is_picked_and_the_vm_is_planned_as_it_will_arrive(registry):
    destination = facts(gpus=[gpu("0000:81:00.0", group=3, device=0x20F1, model="NVIDIA A100 PCIe 40GB",
                                  bars=lab_facts().gpus[0].bars)])
    plan = plan_migration(open_fake(source_with_a100()), "ml-train", open_other_fake(destination), registry)
    assert [(str(m.source.address), str(m.destination.address), m.match) for m in plan.matches] == [
        ("0000:41:00.0", "0000:81:00.0", "same-model")]
    assert not plan.vm_exists_at_destination and not plan.blocked
    assert "migrate-vm-not-there-yet" in [f.code for f in plan.findings]
    assert plan.destination_plan.platform == "otherfake" and plan.destination_plan.vm == "ml-train"
    assert [s.action for s in plan.destination_plan.steps][-1] == "fake.attach"
    carried = {s.setting: s.carried for s in plan.settings}
    assert carried["mmio_window"] and not carried["hide_hypervisor"]
    assert any("does not convert or copy the VM" in note for note in plan.not_done)


def test_same_family_is_a_warning_and_none_is_a_blocker(registry):
    a100_80 = gpu("0000:81:00.0", group=3, device=0x20B5, model="NVIDIA A100 PCIe 80GB")
    plan = plan_migration(open_fake(source_with_a100()), "ml-train", open_other_fake(facts(gpus=[a100_80])), registry)
    assert plan.matches[0].match == "same-family"
    assert "migrate-family-substitute" in [f.code for f in plan.findings]
    t4 = gpu("0000:81:00.0", group=3, device=0x1EB8, model="NVIDIA Tesla T4")
    none = plan_migration(open_fake(source_with_a100()), "ml-train", open_other_fake(facts(gpus=[t4])), registry)
    assert none.blocked and none.destination_plan is None
    assert "migrate-no-equivalent" in [f.code for f in none.findings]


def test_taken_or_shared_group_gpus_are_not_equivalents(registry):
    taken = gpu("0000:81:00.0", group=3, device=0x20F1, owner="someone")
    plan = plan_migration(open_fake(source_with_a100()), "ml-train",
                          open_other_fake(facts(gpus=[taken], vms=[vm("someone")])), registry)
    assert plan.matches[0].destination is None


def test_an_existing_destination_vm_gets_its_own_preflight(registry):
    destination = facts(gpus=[gpu("0000:81:00.0", group=3, device=0x20F1, bars=lab_facts().gpus[0].bars)],
                        vms=[vm("ml-train", state=PowerState.RUNNING)])
    plan = plan_migration(open_fake(source_with_a100()), "ml-train", open_other_fake(destination), registry)
    assert plan.vm_exists_at_destination
    assert plan.blocked and "vm-not-off" in [f.code for f in plan.destination_plan.findings]


def test_a_platform_that_cannot_plan_for_a_missing_vm_says_so(registry, monkeypatch):
    from support.fakes import OtherFakeBackend

    monkeypatch.setattr(OtherFakeBackend, "prepare_planned_vm", Backend.prepare_planned_vm)
    destination = facts(gpus=[gpu("0000:81:00.0", group=3, device=0x20F1)])
    plan = plan_migration(open_fake(source_with_a100()), "ml-train", open_other_fake(destination), registry)
    assert plan.blocked and "migrate-vm-missing" in [f.code for f in plan.findings]


def test_a_vm_without_gpus_is_a_blocker(registry):
    plan = plan_migration(open_fake(lab_facts()), "ml-train", open_other_fake(facts()), registry)
    assert "migrate-no-gpus" in [f.code for f in plan.findings]
