"""Tables as an admin reads them: the host of each VM and GPU on multi-host platforms, honest counts."""

import dataclasses

from gpupass.core.cli import render
from gpupass.core.domain.inventory import PassthroughState
from gpupass.core.domain.mmio import GiB, MiB, MmioPolicy, mmio_need
from gpupass.core.domain.pci import Bar
from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing
from support.fakes import facts, gpu, vm


def vcenter_facts():
    svga = [dataclasses.replace(gpu("00:0f.0", model="SVGA II Adapter", group=None), location=h,
                                passthrough=PassthroughState(capable=False)) for h in ("esx01", "esx02")]
    h100 = dataclasses.replace(gpu("3b:00.0", model="NVIDIA H100", group=None, owner="cad-ws"), location="esx01")
    a100 = dataclasses.replace(gpu("3b:00.0", model="NVIDIA A100", group=None), location="esx02")
    base = facts([*svga, h100, a100], [vm("cad-ws", assigned=["3b:00.0"]), vm("ml-train")])
    return dataclasses.replace(base, vms=(dataclasses.replace(base.vms[0], location="esx01"),
                                          dataclasses.replace(base.vms[1], location="esx02")))


def test_vms_table_has_a_host_column_on_a_multi_host_endpoint():
    lines = render.vms(vcenter_facts()).splitlines()
    assert lines[0].split()[:2] == ["HOST", "VM"]
    assert lines[1].split()[:2] == ["esx01", "cad-ws"] and lines[2].split()[:2] == ["esx02", "ml-train"]
    assert "HOST" not in render.vms(facts([], [vm("a")]))


def test_status_does_not_count_incapable_devices_as_free_and_names_each_once():
    text = render.status(vcenter_facts())
    assert "GPUs      4 (1 free, 1 assigned, 2 not capable of passthrough)" in text
    free = text.split("free:")[1].split("not capable")[0]
    assert "esx02/0000:3b:00.0 (NVIDIA A100)" in free and "SVGA" not in free
    assert text.count("esx01/0000:00:0f.0") == 1 and text.count("esx02/0000:00:0f.0") == 1
    assert "esx01  cad-ws" in text


def test_packed_window_is_explained_not_shown_as_under_provisioned():
    need = mmio_need([Bar(1, 128 * GiB), Bar(3, 32 * MiB)])
    hyperv = MmioPolicy(default_window=512 * MiB, headroom=512 * MiB, power_of_two=False)
    kvm = MmioPolicy(default_window=32 * GiB)
    assert kvm.explain(need) == "the GPUs need 256 GiB of 64-bit MMIO"
    said = hyperv.explain(need)
    assert "128.0 GiB packed" in said and "512 MiB headroom" in said and "not rounded up to a power of two" in said
    assert "need 256" not in said


def test_tables_fit_the_width_and_keep_the_first_column_whole(monkeypatch):
    rows = [["PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)", "NVIDIA A100 PCIe 80GB",
             "a long description that would run far past the edge of an eighty column terminal window"]]
    text = render.table(["ADDRESS", "MODEL", "WHAT"], rows, width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.splitlines()[1].startswith("PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)  ")
    assert "terminal window" in " ".join(text.split())
    # A pipe gets whole lines even when COLUMNS is exported; a terminal gets its width ($COLUMNS first).
    monkeypatch.setenv("COLUMNS", "60")
    assert len(render.table(["A", "B"], [["x", "y" * 300]]).splitlines()[1]) > 300
    monkeypatch.setattr(render.sys, "stdout", type("Tty", (), {"isatty": lambda self: True})())
    assert max(len(line) for line in render.table(["A", "B"], [["x", "y " * 150]]).splitlines()) <= 60


def test_the_gpus_table_sizes_mmio_as_the_platform_does():
    facts_ = facts([gpu("41:00.0", bars=(Bar(1, 128 * GiB), Bar(3, 32 * MiB)), model="A100")], [vm("a")])
    assert "256 GiB" in render.gpus(facts_, MmioPolicy(default_window=32 * GiB))
    packed = render.gpus(facts_, MmioPolicy(default_window=512 * MiB, headroom=512 * MiB, power_of_two=False))
    assert "128.0 GiB" in packed and "256 GiB" not in packed


def test_status_lists_a_gpu_with_shares_as_shared_not_free_and_the_holder_beside_its_share():
    vgpu = ShareType(id="nvidia-46", name="GRID P40-1Q", mode=ShareMode.MDEV)
    p40 = dataclasses.replace(gpu("81:00.0", model="Tesla P40", group=None), sharing=Sharing(
        types=(vgpu,), shares=(Share("u1", "nvidia-46", ShareMode.MDEV, holder="vdi01"),
                               Share("u2", "nvidia-46", ShareMode.MDEV))))
    created_only = dataclasses.replace(gpu("82:00.0", model="Tesla P40", group=None), sharing=Sharing(
        types=(vgpu,), shares=(Share("u3", "nvidia-46", ShareMode.MDEV),)))
    text = render.status(facts([p40, created_only, gpu("41:00.0", model="A100", group=None)], [vm("vdi01")]))
    assert "GPUs      3 (1 free, 0 assigned, 2 shared)" in text
    free = text.split("free:")[1].split("shared (")[0]
    assert "A100" in free and "P40" not in free
    assert "0000:81:00.0 (Tesla P40): held by vdi01; 1 held by no VM" in text
    assert "0000:82:00.0 (Tesla P40): 1 held by no VM" in text
    assert "vdi01  off    0000:81:00.0 GRID P40-1Q (share)" in text
