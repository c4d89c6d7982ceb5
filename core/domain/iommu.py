"""Whether the rest of an IOMMU group lets VFIO hand the group to a VM: the kernel's rule, not a class list.

Linux (drivers/vfio/vfio.c, `vfio_dev_viable` and `vfio_dev_driver_allowed`, kernels up to 5.18): a group is
viable when every device in it is
  - driver-less,
  - bound to a vfio driver,
  - bound to an otherwise allowed driver (the list is { "pci-stub" }), or
  - a PCI interconnect device (`pdev->hdr_type != PCI_HEADER_TYPE_NORMAL`, i.e. a bridge).
Since 5.19 (commit 31076af0cb00 "vfio: Remove use of vfio_group_viable()") the same rule is expressed as DMA
ownership (drivers/vfio/group.c, `vfio_group_ioctl_get_status`:
VIABLE unless `iommu_group_dma_owner_claimed`): a bound driver claims the group's DMA unless it sets
`driver_managed_dma`, which vfio-pci and its variant drivers, pci-stub (commit 18c7a349d072) and pcieport (commit
c7d469849747) do. A group that is not
viable makes QEMU fail at VM start ("group N is not viable").

So an AMD Zen "PCIe Dummy Host Bridge" (class 0600h, normal header, no driver) in a GPU's group is fine, and a
SATA controller bound to ahci is not, whatever their classes.
"""

from __future__ import annotations

from gpupass.core.domain.pci import PciFunction

# Drivers that leave the group usable by VFIO: pci-stub (allow-list of vfio_dev_driver_allowed; driver_managed_dma
# in drivers/pci/pci-stub.c) and pcieport (driver_managed_dma in drivers/pci/pcie/portdrv.c; port devices have a
# bridge header anyway). vfio-pci and its variant drivers (nvgrace_gpu_vfio_pci, xe-vfio-pci, mlx5_vfio_pci, ...
# under drivers/vfio/pci/) are recognised by name below.
VFIO_NEUTRAL_DRIVERS = frozenset({"pci-stub", "pcieport"})


def is_vfio_driver(driver: str) -> bool:
    """vfio-pci and the variant drivers in drivers/vfio/pci/, which all carry 'vfio' in their names."""
    return "vfio" in driver.replace("_", "-")


def keeps_group_viable(function: PciFunction) -> bool:
    """True when this member, staying on the host as it is, does not stop VFIO from using its IOMMU group."""
    if function.is_bridge:
        return True
    driver = function.driver
    return driver is None or is_vfio_driver(driver) or driver in VFIO_NEUTRAL_DRIVERS


def why_viable(function: PciFunction) -> str:
    """The kernel's reason this member is acceptable (for explanations); '' when it is not."""
    if function.is_bridge:
        return "a bridge (non-normal PCI header)"
    if function.driver is None:
        return "driver-less"
    if keeps_group_viable(function):
        return f"bound to {function.driver}"
    return ""
