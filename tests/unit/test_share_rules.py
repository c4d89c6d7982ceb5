"""The share request in the core: names of share types, request checks, context resolution and the preflight rules,
on facts built in memory (the fake platform, given a share mode where a test needs one)."""

from __future__ import annotations

import dataclasses

import pytest

from gpupass.core.domain.context import Capabilities
from gpupass.core.domain.inventory import PowerState
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing, neutral_profile
from gpupass.core.errors import NotFound, NotSupported, UsageError
from gpupass.core.plugins import collect, make_plugin_manager
from gpupass.core.service import build_context, make_plan, preflight
from support.fakes import A, FakeBackend, FakePlugin, facts, gpu, open_fake, vm

P1Q = ShareType("nvidia-46", "GRID P40-1Q", ShareMode.MDEV, available=21, max_instances=24)
P4C = ShareType("nvidia-283", "GRID P40-4C", ShareMode.MDEV, available=0, max_instances=6)


class SharingFake(FakeBackend):
    capabilities = Capabilities(share_modes=(ShareMode.MDEV,))


@pytest.fixture
def registry():
    return collect(make_plugin_manager([FakePlugin()], load_entry_points=False))


def host(shares=(), one_type=True, owner=None, types=(P1Q, P4C), state=PowerState.OFF):
    card = dataclasses.replace(gpu("0000:81:00.0", owner=owner), sharing=Sharing(types, tuple(shares), one_type))
    return facts(gpus=[card, gpu("0000:42:00.0")], vms=[vm("ml-train", state=state), vm("vdi01")])


def findings(registry, state, share="P40-1Q", vm_name="ml-train", backend=SharingFake):
    fake = open_fake(state)
    fake.__class__ = backend
    ctx = build_context(fake, state, AssignmentRequest(vm_name, (A("81:00.0"),), AssignOptions(share=share)))
    return {f.code: f for f in preflight(ctx, registry)}


def test_a_profile_is_named_by_id_by_name_or_without_the_product_prefix():
    assert neutral_profile("GRID P40-1Q") == neutral_profile("grid_p40-1q") == neutral_profile("P40-1Q") == "p40-1q"
    assert neutral_profile("NVIDIA A100-4C") == "a100-4c" and neutral_profile("nvidia-46") == ""
    assert all(P1Q.answers_to(name) for name in ("nvidia-46", "GRID P40-1Q", "grid p40-1q", "P40-1Q", "grid_p40-1q"))
    assert not P1Q.answers_to("P40-1B") and not P1Q.answers_to("partitions-4")


def test_a_share_request_names_one_gpu_and_no_whole_gpu_option():
    with pytest.raises(UsageError, match="one GPU"):
        AssignmentRequest("vm", (A("81:00.0"), A("42:00.0")), AssignOptions(share="P40-1Q"))
    with pytest.raises(UsageError, match="--live"):
        AssignmentRequest("vm", (A("81:00.0"),), AssignOptions(share="P40-1Q", live=True))
    with pytest.raises(UsageError, match="share type"):
        AssignOptions(share=" ")


def test_a_free_type_on_an_off_vm_has_no_finding(registry):
    assert findings(registry, host()) == {}


def test_a_backend_without_the_share_mode_says_not_supported(registry):
    with pytest.raises(NotSupported, match="mdev share .* not supported on fake"):
        findings(registry, host(), backend=FakeBackend)


def test_an_unknown_type_is_not_found_with_the_offered_types(registry):
    with pytest.raises(NotFound) as error:
        findings(registry, host(), share="P40-9Q")
    assert "nvidia-46 (GRID P40-1Q)" in error.value.remedy


def test_full_mixed_given_whole_and_running_block(registry):
    found = findings(registry, host(shares=[Share("u1", "nvidia-46", ShareMode.MDEV, "vdi01")]), share="P40-4C")
    assert found["share-capacity-exhausted"].blocks and found["share-type-mixed"].blocks
    assert "share-type-mixed" not in findings(registry, host(shares=[Share("u1", "nvidia-46", ShareMode.MDEV)],
                                                              one_type=False), share="P40-4C")
    assert findings(registry, host(owner="vdi01"))["gpu-assigned-whole"].blocks
    assert findings(registry, host(state=PowerState.RUNNING))["vm-not-off"].blocks


def test_a_free_share_of_the_type_makes_room_where_the_count_is_zero(registry):
    full = dataclasses.replace(P1Q, available=0)
    free = Share("u2", "nvidia-46", ShareMode.MDEV, None)
    assert "share-capacity-exhausted" in findings(registry, host(types=(full,)))
    assert "share-capacity-exhausted" not in findings(registry, host(types=(full,), shares=[free]))
    unknown = dataclasses.replace(P1Q, available=None)
    assert findings(registry, host(types=(unknown,)))["share-capacity-unknown"].severity.value == "warning"


def test_a_type_offered_by_another_gpu_only_is_a_blocker_naming_it(registry):
    state = host()
    other = dataclasses.replace(state.gpus[1], sharing=Sharing((ShareType("nvidia-99", "GRID P40-24Q",
                                                                          ShareMode.MDEV, 1),)))
    state = dataclasses.replace(state, gpus=(state.gpus[0], other))
    assert findings(registry, state, share="P40-24Q")["share-type-not-offered"].blocks


def test_a_share_the_vm_holds_makes_assign_a_no_op_and_release_find_it(registry):
    held = Share("u1", "nvidia-46", ShareMode.MDEV, "ml-train")
    state = host(shares=[held])
    fake = open_fake(state)
    fake.__class__ = SharingFake
    plan = make_plan(fake, state, AssignmentRequest("ml-train", (A("81:00.0"),), AssignOptions(share="nvidia-46")),
                     registry)
    assert plan.nothing_to_do and plan.shares[0].share == held and plan.operation == "assign-share"
    ctx = build_context(fake, state, ReleaseRequest("ml-train", ()))
    assert ctx.operation == "release-share" and [c.share for c in ctx.shares] == [held]
    assert build_context(fake, state, ReleaseRequest("vdi01", ())).operation == "release"  # holds nothing


def test_share_capacity_across_hosts():
    from gpupass.core.fleet import HostResult, share_capacity

    unknown = dataclasses.replace(P1Q, available=None)
    rows = share_capacity([
        HostResult("a", facts=host()),
        HostResult("b", facts=host(owner="vdi01")),                       # given whole: no room
        HostResult("c", facts=host(types=(unknown,))),                     # the platform does not say
        HostResult("d", facts=host(types=(dataclasses.replace(P1Q, available=0),),
                                   shares=[Share("u9", "nvidia-46", ShareMode.MDEV, None)])),
    ], "P40-1Q")
    assert [(r.host, r.free) for r in rows] == [("a", 21), ("d", 1), ("b", 0), ("c", None)]


# -- MIG mode (share_rules.mig_mode_matches) ------------------------------------------------------------------
MIG_1_18C = ShareType("1414", "NVIDIA H200X-1-18C", ShareMode.MDEV, available=7)
TS_141C = ShareType("1428", "NVIDIA H200X-141C", ShareMode.MDEV, available=1)


def mig_host(mig_mode):
    card = dataclasses.replace(gpu("0000:81:00.0"), sharing=Sharing((MIG_1_18C, TS_141C), (), mig_mode=mig_mode))
    return facts(gpus=[card], vms=[vm("ml-train")])


@pytest.mark.parametrize("mig_mode, asked, code, blocks", [
    (False, "1414", "mig-mode-disabled", True),   # MIG-backed on a GPU not in MIG mode
    (None, "1414", "mig-mode-unknown", False),    # the platform does not say
    (True, "1428", "mig-mode-enabled", False),    # time-sliced on a GPU in MIG mode
])
def test_mig_mode_against_the_kind_of_vgpu_type(registry, mig_mode, asked, code, blocks):
    found = findings(registry, mig_host(mig_mode), share=asked)
    assert code in found and found[code].blocks is blocks
    assert not {"mig-mode-disabled", "mig-mode-unknown", "mig-mode-enabled"} - {code} & set(found)


@pytest.mark.parametrize("mig_mode, asked", [(True, "1414"), (False, "1428"), (None, "1428")])
def test_mig_mode_that_fits_has_no_finding(registry, mig_mode, asked):
    assert not {"mig-mode-disabled", "mig-mode-unknown", "mig-mode-enabled"} & set(
        findings(registry, mig_host(mig_mode), share=asked))


def test_mig_mode_rule_ignores_types_that_are_no_vgpu_profile(registry):
    assert "mig-mode-unknown" not in findings(registry, host(), share="P40-1Q")  # time-sliced, mode unknown: fine


def test_a_gpu_whose_host_must_change_first_is_blocked_unless_the_request_allows_it(registry):
    card = dataclasses.replace(gpu("0000:81:00.0"), sharing=Sharing((P1Q,), (), True, host_change="set it to X"))
    state = facts(gpus=[card], vms=[vm("ml-train")])
    blocked = findings(registry, state)["share-host-change-needed"]
    assert blocked.blocks and "set it to X" in blocked.message and "--allow-host-sharing-change" in blocked.remedy
    fake = open_fake(state)
    fake.__class__ = SharingFake
    allowed = AssignmentRequest("ml-train", (A("81:00.0"),), AssignOptions(share="P40-1Q",
                                                                          allow_host_sharing_change=True))
    found = {f.code: f for f in preflight(build_context(fake, state, allowed), registry)}
    assert "share-host-change-needed" not in found and not found["share-host-change"].blocks
    # a GPU that needs no change has neither
    assert not {"share-host-change", "share-host-change-needed"} & set(findings(registry, host()))
