"""The lab host: two A100 PCIe 80GB, one T4 behind an RMRR, a T4 without a host driver, an AMD Instinct MI300X
(a processing accelerator, class 12h, without a host driver), five VMs."""
from __future__ import annotations

import os
from pathlib import Path

from .model import (Checkpoint, GpuPartition, HostModel, PartitionableGpu, PnpDevice,  # noqa: F401  (Checkpoint
                    VirtualMachine, partitionable_gpu_name)                               # re-exported)

M = 1024 ** 2
G = 1024 ** 3

# BAR sizes as the catalog has them (core/domain/catalog.py, with sources); bars_below_4g=1 below places the first one,
# NVIDIA's 32-bit BAR0, below 4 GiB as a host firmware must.
A100_80G_BARS = [16 * M, 128 * G, 32 * M]
T4_BARS = [16 * M, 256 * M, 32 * M]

A100_1_LOC = "PCIROOT(20)#PCI(0300)#PCI(0000)#PCI(0800)#PCI(0000)"
A100_2_LOC = "PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)"
T4_LOC = "PCIROOT(0)#PCI(0200)#PCI(0000)"
T4_NO_DRIVER_LOC = "PCIROOT(80)#PCI(0100)#PCI(0000)"
MI300X_LOC = "PCIROOT(A0)#PCI(0100)#PCI(0000)#PCI(0000)#PCI(0000)"
# Lab assumption: the MI300X's BAR sizes are not taken from a published output.
MI300X_BARS = [256 * G, 2 * M, 512 * 1024]


def lab_host() -> HostModel:
    """A fresh lab model (a new object every call)."""
    a100_1 = PnpDevice(
        instance_id="PCI\\VEN_10DE&DEV_20B5&SUBSYS_153310DE&REV_A1\\4&2B8F1D3A&0&0008",
        friendly_name="NVIDIA A100 80GB PCIe", pnp_class="Display", location_path=A100_1_LOC,
        vendor_id=0x10DE, device_id=0x20B5, bars=list(A100_80G_BARS), bars_below_4g=1,
        enabled=False, dismounted=True, assigned_vm="cad-ws")
    a100_2 = PnpDevice(
        instance_id="PCI\\VEN_10DE&DEV_20B5&SUBSYS_153310DE&REV_A1\\4&1C2E9A77&0&0010",
        friendly_name="NVIDIA A100 80GB PCIe", pnp_class="Display", location_path=A100_2_LOC,
        vendor_id=0x10DE, device_id=0x20B5, bars=list(A100_80G_BARS), bars_below_4g=1)
    t4 = PnpDevice(
        instance_id="PCI\\VEN_10DE&DEV_1EB8&SUBSYS_12A210DE&REV_A1\\4&3F0B6C21&0&0010",
        friendly_name="NVIDIA Tesla T4", pnp_class="Display", location_path=T4_LOC,
        vendor_id=0x10DE, device_id=0x1EB8, bars=list(T4_BARS), bars_below_4g=1, rmrr=True)
    # As Microsoft's DDA guides leave a GPU after its host driver is uninstalled; instance id, name, empty Class
    # and Status Error as in the real output in tests/fixtures/real/hyperv/aks-t4-no-host-driver.txt.
    t4_no_driver = PnpDevice(
        instance_id="PCI\\VEN_10DE&DEV_1EB8&SUBSYS_12A210DE&REV_A1\\4&32EEF88F&0&0000",
        friendly_name="3D Video Controller", pnp_class="", class_code=0x030200, location_path=T4_NO_DRIVER_LOC,
        vendor_id=0x10DE, device_id=0x1EB8, bars=list(T4_BARS), bars_below_4g=1)
    # A processing accelerator (class 1200h, as lspci shows MI300X) with no Windows driver. "PCI Device" is
    # Device Manager's generic name for a PCI function without a driver (lab assumption for this class).
    mi300x = PnpDevice(
        instance_id="PCI\\VEN_1002&DEV_74A1&SUBSYS_74A11002&REV_00\\6&1A2B3C4D&0&00000010",
        friendly_name="PCI Device", pnp_class="", class_code=0x120000, location_path=MI300X_LOC,
        vendor_id=0x1002, device_id=0x74A1, bars=list(MI300X_BARS))
    vms = [
        VirtualMachine("ml-train", generation=2, state="Off", memory_startup=64 * G,
                       vm_id="6f1c1a52-3f0e-4d5e-9a51-0c8e6b7d1a01"),
        VirtualMachine("render01", generation=1, state="Off", memory_startup=16 * G,
                       vm_id="0b7e2f44-91d3-4b8a-8f0e-5d2c6a9e3b02"),
        VirtualMachine("web01", generation=2, state="Running", memory_startup=8 * G,
                       vm_id="c3d9a7e1-2b4f-4e6a-b1c8-7f5e0d2a4c03"),
        VirtualMachine("cad-ws", generation=2, state="Off", memory_startup=32 * G,
                       automatic_stop_action="TurnOff", guest_controlled_cache_types=True,
                       low_mmio=3 * G, high_mmio=sum(A100_80G_BARS) + 512 * M,
                       vm_id="9a4e6b1f-7c2d-4f8e-a3b5-1e0c9d8f7a04"),
        VirtualMachine("dyn-mem", generation=2, state="Off", memory_startup=8 * G,
                       dynamic_memory_enabled=True, vm_id="e5b8c2d7-4a1f-4c3e-9d6b-2f7a0e1c8b05"),
    ]
    return HostModel(name="HV-LAB01", iov_support=True, iov_support_reasons=[],
                     devices=[a100_1, a100_2, t4, t4_no_driver, mi300x], vms=vms)


# The partitionable GPU of the real Get-VMHostPartitionableGpu output in
# tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt: its instance id (from the Name there) and
# partition counts are real; its location path, friendly name and BARs are lab assumptions.
RTX_GPUP_INSTANCE = "PCI\\VEN_10DE&DEV_2504&SUBSYS_40741458&REV_A1\\4&23B96B75&0&0008"
RTX_GPUP_LOC = "PCIROOT(0)#PCI(0100)#PCI(0000)"
GPUP_HOLDER = "web01"


def partitioned_lab_host() -> HostModel:
    """The lab host plus a GPU that is partitionable (GPU-P), 32 partitions, one of them held by web01."""
    m = lab_host()
    m.devices.append(PnpDevice(
        instance_id=RTX_GPUP_INSTANCE, friendly_name="NVIDIA GeForce RTX 3060", pnp_class="Display",
        location_path=RTX_GPUP_LOC, vendor_id=0x10DE, device_id=0x2504, bars=list(T4_BARS), bars_below_4g=1))
    m.partitionable.append(PartitionableGpu(RTX_GPUP_INSTANCE, valid_partition_counts=[32], partition_count=32))
    holder = m.vm(GPUP_HOLDER)
    assert holder is not None
    holder.gpu_partitions.append(GpuPartition(partitionable_gpu_name(RTX_GPUP_INSTANCE)))
    return m


def load_lab(path: str | os.PathLike[str]) -> HostModel:
    """The lab model saved at ``path`` (JSON), or a fresh :func:`partitioned_lab_host` when there is none yet."""
    p = Path(path)
    if p.exists():
        return HostModel.from_json(p.read_text(encoding="utf-8"))
    return partitioned_lab_host()
