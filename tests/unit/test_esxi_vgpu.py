"""ESXi vGPU profiles as neutral shares (backends/esxi/vgpu.py), and the lab's P40 profiles against a real output."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gpupass.backends.esxi import vgpu
from gpupass.backends.esxi.lab.simulator import P40_VGPU_TYPES
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.sharing import ShareMode

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "sharing"
GiB, MiB = 1 << 30, 1 << 20
A, B = PciAddress.parse("0000:3b:00.0"), PciAddress.parse("0000:af:00.0")
P40 = (0x10DE, 0x1B38)


def real_p40_types() -> dict[str, tuple[int, int]]:
    """`mdevctl types` of a real Tesla P40: 'GRID P40-4C' -> (framebuffer MiB, max_instance)."""
    out: dict[str, tuple[int, int]] = {}
    name = None
    for line in (CORPUS / "mdevctl-types-tesla-p40.txt").read_text().splitlines():
        if line.strip().startswith("Name: "):
            name = line.split("Name: ", 1)[1].strip()
        elif line.strip().startswith("Description: ") and name:
            desc = dict(part.strip().split("=", 1) for part in line.split(": ", 1)[1].split(","))
            out[name] = (int(desc["framebuffer"].rstrip("M")), int(desc["max_instance"]))
    return out


def esxi_name(grid_name: str) -> str:
    """'GRID P40-4C' as ESXi names the profile: grid_p40-4c (sources in vcsim/vgpu.go)."""
    return "grid_" + grid_name.removeprefix("GRID ").lower()


def test_the_labs_p40_profiles_are_the_real_ones():
    real = {esxi_name(name): value for name, value in real_p40_types().items()}
    assert len(real) == 6
    assert {name: (fb, most) for name, fb, most, _ in P40_VGPU_TYPES} == real


def test_max_instances_derived_from_memory_match_the_real_p40():
    for name, (fb_mib, most) in ((esxi_name(n), v) for n, v in real_p40_types().items()):
        assert vgpu.profile_framebuffer(name) == fb_mib * MiB
        assert 24 * GiB // vgpu.profile_framebuffer(name) == most, name


@pytest.mark.parametrize("name, expected", [
    ("grid_p40-4c", 4 * GiB), ("grid_p40-2b4", 2 * GiB), ("grid_a100-3-20c", 20 * GiB), ("nvidia_l40s-48q", 48 * GiB),
    ("grid_m60-0b", 512 * MiB), ("GRID_T4-16Q", 16 * GiB), ("grid_a100d-8c", 8 * GiB),
    ("not-a-profile", None), ("grid_p40", None), ("", None),
])
def test_framebuffer_from_profile_name(name, expected):
    assert vgpu.profile_framebuffer(name) == expected


def graphics(devices, profiles=("grid_p40-2b", "grid_p40-4c")):
    return vgpu.HostGraphics("sharedDirect", "performance", tuple(profiles),
                             {d.address: d for d in devices})


def device(address, kind="sharedDirect", vms=(), memory=24 * GiB):
    return vgpu.GraphicsDevice(address, kind, memory, tuple(vms))


def test_an_idle_gpu_offers_every_profile_at_its_maximum():
    sharing = vgpu.sharing_of(graphics([device(A)]), A, {A: P40}, {}, {})
    assert [(t.id, t.available, t.max_instances, t.framebuffer_bytes) for t in sharing.types] == [
        ("grid_p40-2b", 12, 12, 2 * GiB), ("grid_p40-4c", 6, 6, 4 * GiB)]
    assert sharing.modes == (ShareMode.VGPU_PROFILE,) and not sharing.shares


def test_running_vgpus_fill_their_profile_and_close_the_others():
    names = {"vm-1": "vdi <'\"&>", "vm-2": "vdi02"}
    sharing = vgpu.sharing_of(graphics([device(A, vms=("vm-1", "vm-2"))]), A, {A: P40}, names,
                              {"vdi <'\"&>": ("grid_p40-2b",), "vdi02": ("grid_p40-2b",), "off": ("grid_p40-4c",)})
    assert {t.id: t.available for t in sharing.types} == {"grid_p40-2b": 10, "grid_p40-4c": 0}
    assert [(s.type_id, s.holder) for s in sharing.shares] == [("grid_p40-2b", "vdi <'\"&>"), ("grid_p40-2b", "vdi02")]
    assert sharing.holders == tuple(sorted(names.values()))


@pytest.mark.parametrize("kind", ["direct", "basic", "shared"])
def test_a_gpu_not_in_shared_direct_mode_offers_nothing(kind):
    assert vgpu.sharing_of(graphics([device(A, kind)]), A, {A: P40}, {}, {}) == vgpu.Sharing()


def test_the_domainless_pci_id_form_is_found():
    short = PciAddress.parse("3b:00.0")
    sharing = vgpu.sharing_of(graphics([device(short)]), PciAddress(0x0001, 0x3B, 0, 0), {}, {}, {})
    assert sharing.offered


def test_two_gpu_models_leave_the_maximum_unknown():
    sharing = vgpu.sharing_of(graphics([device(A), device(B)]), A, {A: P40, B: (0x10DE, 0x1EB8)}, {}, {})
    assert {(t.max_instances, t.available) for t in sharing.types} == {(None, None)}
    assert all("which of its GPU models" in t.description for t in sharing.types)


def test_read_host_from_pyvmomi_shaped_properties():
    info = SimpleNamespace(pciId="0000:3b:00.0", graphicsType="sharedDirect", memorySizeInKB=24 * 1024 * 1024,
                           vm=[SimpleNamespace(_moId="vm-7")])
    props = {"config.graphicsInfo": [info, SimpleNamespace(pciId="garbage", graphicsType="basic", memorySizeInKB=0,
                                                           vm=[])],
             "config.graphicsConfig": SimpleNamespace(hostDefaultGraphicsType="sharedDirect",
                                                      sharedPassthruAssignmentPolicy="consolidation"),
             "config.sharedPassthruGpuTypes": ["grid_p40-8c"]}
    host = vgpu.read_host(props)
    assert (host.default_type, host.assignment_policy, host.profiles) == ("sharedDirect", "consolidation",
                                                                          ("grid_p40-8c",))
    assert host.devices == {A: vgpu.GraphicsDevice(A, "sharedDirect", 24 * GiB, ("vm-7",), "0000:3b:00.0")}
    assert not vgpu.read_host({}).read



def test_a_vgpu_of_a_vm_that_is_off_is_parked_where_it_would_fit():
    host = graphics([device(A, vms=("vm-1",)), device(B)])
    running = {A: {"grid_p40-2b"}, B: set()}
    assert vgpu.park(host, "ml", ("grid_p40-4c",), {}, running) == {B: [vgpu.Parked("ml", 1, "grid_p40-4c")]}
    assert vgpu.park(host, "ml", ("grid_p40-2b",), {}, running) == {A: [vgpu.Parked("ml", 1, "grid_p40-2b")]}
    # the GPU gpupass recorded when it added the vGPU wins; a record naming no graphics device is ignored
    assert vgpu.park(host, "ml", ("grid_p40-4c",), {1: "0000:3b:00.0"}, running) == {A: [vgpu.Parked("ml", 1, "grid_p40-4c")]}
    assert vgpu.park(host, "ml", ("grid_p40-4c",), {1: "0000:99:00.0"}, running) == {B: [vgpu.Parked("ml", 1, "grid_p40-4c")]}
    assert vgpu.park(host, "ml", ("grid_a100-4c",), {}, running) == {}  # not offered here: on no GPU
    sharing = vgpu.sharing_of(host, B, {A: P40, B: P40}, {}, {}, (vgpu.Parked("ml", 1, "grid_p40-4c"),))
    assert [(s.id, s.type_id, s.holder) for s in sharing.shares] == [("ml/vgpu-1", "grid_p40-4c", "ml")]
    assert {t.id: t.available for t in sharing.types} == {"grid_p40-2b": 12, "grid_p40-4c": 6}  # it takes no room


def vm_plan(**kw):
    from gpupass.backends.esxi.state import VmPlan

    base = dict(name="vm", host="esx03", moid="vm-1", memory_mb=16384, reservation_mb=1024, locked=False,
                firmware="efi")
    return VmPlan(**{**base, **kw})


def test_assign_records_the_gpu_and_the_reservation_it_found():
    import json

    from gpupass.backends.esxi import shares

    changes = shares.assign_changes(vm_plan(), "grid_p40-4c", "0000:af:00.0")
    assert changes["add"] == [{"vgpu": "grid_p40-4c", "index": 1}]
    assert (changes["locked"], changes["reservation_mb"]) == (True, 16384)
    record = json.loads(changes["extra"]["gpupass.assignment"])
    assert record["vgpus"] == [{"index": 1, "profile": "grid_p40-4c", "gpu": "0000:af:00.0"}]
    assert record["previous"] == {"reservation_mb": 1024, "locked": False}
    second = shares.assign_changes(vm_plan(vgpus=("grid_p40-4c",), record=record, reservation_mb=16384, locked=True),
                                   "grid_p40-4c", "0000:3b:00.0")
    again = json.loads(second["extra"]["gpupass.assignment"])
    assert again["previous"] == {"reservation_mb": 1024, "locked": False}  # the first value found is kept
    assert [v["index"] for v in again["vgpus"]] == [1, 2]


def test_release_restores_only_when_nothing_is_left():
    import json

    from gpupass.backends.esxi import shares

    record = {"devices": [], "previous": {"reservation_mb": 1024, "locked": False},
              "vgpus": [{"index": 1, "profile": "grid_p40-4c", "gpu": "A"}, {"index": 2, "profile": "grid_p40-4c",
                                                                               "gpu": "B"}]}
    two = vm_plan(vgpus=("grid_p40-4c", "grid_p40-4c"), record=record, reservation_mb=16384, locked=True)
    first = shares.release_changes(two, [(1, "grid_p40-4c")])
    assert first["remove"] == [{"vgpu": "grid_p40-4c", "index": 1}] and first["locked"] is None
    kept = json.loads(first["extra"]["gpupass.assignment"])["vgpus"]
    assert kept == [{"index": 1, "profile": "grid_p40-4c", "gpu": "B"}]  # the second moved up
    both = shares.release_changes(two, [(1, "grid_p40-4c"), (2, "grid_p40-4c")])
    assert (both["locked"], both["reservation_mb"], both["extra"]) == (False, 1024, {"gpupass.assignment": ""})
    # a passthrough device that stays keeps the reservation and the record
    mixed = shares.release_changes(vm_plan(vgpus=("grid_p40-4c",), record=record, passthrough_devices=1),
                                   [(1, "grid_p40-4c")])
    assert mixed["locked"] is None and mixed["extra"]["gpupass.assignment"]
    # a vGPU added by other tools: nothing of gpupass' to restore
    foreign = shares.release_changes(vm_plan(vgpus=("grid_p40-4c",)), [(1, "grid_p40-4c")])
    assert (foreign["locked"], foreign["reservation_mb"], foreign["extra"]) == (None, None, {})


@pytest.mark.parametrize("share_id, expected", [("vm/vgpu-2", 2), ("vm/vgpu@0000:3b:00.0", None),
                                                ("other/vgpu-1", None), ("vm/vgpu-x", None)])
def test_share_id_to_index(share_id, expected):
    from gpupass.backends.esxi import shares

    assert shares.index_of(share_id, "vm") == expected


def test_the_planning_state_keeps_the_vgpus_through_a_snapshot():
    import json

    from gpupass.backends.esxi.state import EsxiState

    state = EsxiState((7, 0, 3), "vim.version.v7_0_3_0", {},
                      {"vm": vm_plan(vgpus=("grid_p40-4c",), passthrough_devices=1)})
    again = EsxiState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state and again.vms["vm"].vgpus == ("grid_p40-4c",)


def test_a_gpu_in_shared_mode_offers_its_models_profiles_once_switched():
    shared = vgpu.GraphicsDevice(B, "shared", 24 * GiB, (), "af:00.0")
    host = graphics([device(A), shared])
    sharing = vgpu.sharing_of(host, B, {A: P40, B: P40}, {}, {})
    assert sharing.types and "sharedDirect, then an Xorg restart" in sharing.host_change and "af:00.0" in sharing.host_change
    assert not vgpu.sharing_of(host, A, {A: P40, B: P40}, {}, {}).host_change
    # another model than the shared-direct GPUs: what it would offer is not known
    assert vgpu.sharing_of(host, B, {A: P40, B: (0x10DE, 0x1EB8)}, {}, {}) == vgpu.Sharing()
    # no GPU in shared direct mode: nothing to learn the profiles from
    assert vgpu.sharing_of(graphics([shared]), B, {B: P40}, {}, {}) == vgpu.Sharing()
    assert vgpu.device_id(vgpu.settings_of(host), B) == "af:00.0"
