"""migrate plan of a VM that holds a share: the nearest equivalent share at the destination and its plan there."""

from __future__ import annotations

import json

from gpupass.core.domain.sharing import ShareMode, ShareType, Sharing
from gpupass.core.migration import pick_share_equivalents
from support.cli import gpupass
from support.fakes import facts, gpu

P40_1Q = ShareType("nvidia-46", "GRID P40-1Q", ShareMode.MDEV, 21, 24, 1 << 30)


def run(*args: str, code: int = 0) -> dict:
    return json.loads(gpupass(*args, expect=code).stdout)


def offering(address: str, *types: ShareType):
    import dataclasses

    return dataclasses.replace(gpu(address), sharing=Sharing(types))


def test_the_same_profile_wins_then_the_smallest_large_enough_then_unknown_sizes():
    source = offering("0000:81:00.0", P40_1Q)
    same = ShareType("grid_p40-1q", "grid_p40-1q", ShareMode.VGPU_PROFILE, 4)
    big = ShareType("grid_p40-4q", "grid_p40-4q", ShareMode.VGPU_PROFILE, 4, framebuffer_bytes=4 << 30)
    bigger = ShareType("grid_p40-8q", "grid_p40-8q", ShareMode.VGPU_PROFILE, 4, framebuffer_bytes=8 << 30)
    part = ShareType("partitions-4", "1/4 of the GPU", ShareMode.GPU_PARTITION, 4)
    (m,) = pick_share_equivalents(((source, P40_1Q),), facts(gpus=[offering("0000:01:00.0", bigger, big, same)]))
    assert (m.destination_type.id, m.match) == ("grid_p40-1q", "same-profile")
    (m,) = pick_share_equivalents(((source, P40_1Q),), facts(gpus=[offering("0000:01:00.0", bigger, big)]))
    assert (m.destination_type.id, m.match) == ("grid_p40-4q", "framebuffer")
    (m,) = pick_share_equivalents(((source, P40_1Q),), facts(gpus=[offering("0000:01:00.0", part)]))
    assert (m.destination_type.id, m.match) == ("partitions-4", "size-unknown")
    full = ShareType("grid_p40-1q", "grid_p40-1q", ShareMode.VGPU_PROFILE, 0)
    (m,) = pick_share_equivalents(((source, P40_1Q),), facts(gpus=[offering("0000:01:00.0", full)]))
    assert m.destination is None and m.match is None


def test_a_vgpu_on_kvm_maps_to_a_gpu_partition_on_hyperv(labs):
    plan = run("migrate", "plan", "lab-kvm", "vdi01", "lab-hyperv", "--json")
    (share,) = plan["shares"]
    assert (share["source_type"], share["source_mode"]) == ("nvidia-46", "mdev")
    assert (share["destination_type"], share["destination_mode"], share["match"]) == (
        "partitions-32", "gpu-partition", "size-unknown")
    assert "migrate-share-size-unknown" in {f["code"] for f in plan["findings"]}
    destination = plan["destination_plan"]
    assert destination["operation"] == "assign-share" and not destination["blocked"]
    assert [s["action"] for s in destination["steps"]] == ["hyperv.add-gpu-partition"]


def test_the_same_profile_on_another_kvm_vm(labs):
    plan = run("migrate", "plan", "lab-kvm", "vdi01", "lab-kvm", "--dst-vm", "render01", "--json")
    (share,) = plan["shares"]
    assert (share["destination"], share["destination_type"], share["match"]) == ("0000:81:00.0", "nvidia-46",
                                                                                 "same-profile")
    assert plan["destination_plan"]["steps"][0]["action"] == "kvm.define-domain"
