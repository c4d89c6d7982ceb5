"""The kernel's IOMMU group rule (vfio_dev_viable / DMA ownership), as core/domain/iommu.py models it."""

import dataclasses

import pytest

from gpupass.core.domain.iommu import keeps_group_viable, why_viable
from gpupass.core.domain.pci import HEADER_BRIDGE, HEADER_NORMAL, PciAddress, PciFunction

A = PciAddress.parse


def member(class_code: int, driver: str | None, header_type: int | None = None) -> PciFunction:
    return PciFunction(A("00:00.2"), 0x1022, 0x1482, class_code, driver=driver, header_type=header_type)


@pytest.mark.parametrize("function, viable", [
    # AMD Zen "PCIe Dummy Host Bridge": host bridge class 0600h, normal header, no driver -> fine.
    (member(0x060000, None), True),
    # The same host bridge with a driver is not fine: the kernel judges the driver, not the class.
    (member(0x060000, "amd_dummy"), False),
    # PCI-to-PCI bridges / root ports have a non-normal header, whatever driver holds them.
    (member(0x060400, "pcieport"), True),
    (member(0x060400, "shpchp"), True),
    (member(0x060400, "some_driver", header_type=HEADER_BRIDGE), True),
    # A header reported as normal wins over the class.
    (member(0x060400, "some_driver", header_type=HEADER_NORMAL), False),
    # Endpoints: fine when driver-less, on vfio-pci (or a variant) or pci-stub; not when a host driver holds them.
    (member(0x010601, None), True),
    (member(0x010601, "ahci"), False),
    (member(0x0C0330, "xhci_hcd"), False),
    (member(0x020000, "vfio-pci"), True),
    (member(0x030200, "nvgrace_gpu_vfio_pci"), True),
    (member(0x020000, "pci-stub"), True),
])
def test_a_member_keeps_the_group_viable_by_the_kernels_rule(function, viable):
    assert keeps_group_viable(function) is viable
    assert bool(why_viable(function)) is viable


def test_reasons_name_what_the_kernel_looks_at():
    assert why_viable(member(0x060000, None)) == "driver-less"
    assert why_viable(member(0x060400, "pcieport")).startswith("a bridge")
    assert why_viable(member(0x020000, "pci-stub")) == "bound to pci-stub"


def test_a_processing_accelerator_is_a_gpu_and_not_a_display():
    mi300x = PciFunction(A("0000:05:00.0"), 0x1002, 0x74A1, 0x120000)
    assert mi300x.is_gpu and not mi300x.is_display and mi300x.kind == "processing accelerator"
    audio = dataclasses.replace(mi300x, class_code=0x040300)
    assert not audio.is_gpu
