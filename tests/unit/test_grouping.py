from gpupass.core.domain.grouping import group_gpus
from gpupass.core.domain.mmio import GiB
from gpupass.core.domain.pci import IommuGroup, PciAddress, PciFunction

A = PciAddress.parse


def f(address, class_code, vendor=0x10DE, device=0x2684):
    return PciFunction(A(address), vendor, device, class_code, name="x")


def test_display_functions_become_gpus_with_their_card_functions_as_companions():
    functions = [f("01:00.1", 0x040300, device=0x22BA), f("01:00.0", 0x030000), f("00:17.0", 0x010601, 0x8086),
                 f("41:00.0", 0x030200, device=0x20F1)]
    group = IommuGroup(14, (A("01:00.0"), A("01:00.1")))
    gpus = group_gpus(functions, {A("01:00.0"): group}, {A("41:00.0"): "ml-train"})
    assert [str(g.address) for g in gpus] == ["0000:01:00.0", "0000:41:00.0"]
    rtx, a100 = gpus
    assert [str(c.address) for c in rtx.companions] == ["0000:01:00.1"]
    assert rtx.iommu_group == group and rtx.assigned_to is None
    assert a100.assigned_to == "ml-train"
    assert a100.model == "NVIDIA A100 PCIe 40GB"


def test_bars_come_from_the_catalog_only_when_the_host_gives_none():
    gpus = group_gpus([f("41:00.0", 0x030200, device=0x20F1)], {}, {})
    assert max(b.size for b in gpus[0].bars) == 64 * GiB
    unknown = group_gpus([f("02:00.0", 0x030000, device=0x2204)], {}, {})
    assert unknown[0].bars is None


def test_processing_accelerators_are_gpus_on_every_platform():
    """AMD Instinct MI300X reports class 1200h (processing accelerator), not 03xxh."""
    functions = [f("0000:05:00.0", 0x120000, vendor=0x1002, device=0x74A1), f("0000:06:00.0", 0x118000, 0x8086)]
    gpus = group_gpus(functions, {}, {})
    assert [str(g.address) for g in gpus] == ["0000:05:00.0"]
