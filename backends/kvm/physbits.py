"""Guest physical address bits: QEMU will not start a VM whose highest guest address its vCPU cannot reach.

QEMU (hw/i386/pc.c, `pc_memory_init`): `maxusedaddr = pc_max_used_gpa(pcms, pci_hole64_size)` is the end of the
64-bit PCI hole, `pc_pci_hole64_start() + pci_hole64_size - 1`; if `(1 << cpu->phys_bits) - 1` is below it,
QEMU exits with "Address space limit 0x... < 0x... phys-bits too low (N)". The hole starts after the RAM above
4 GiB, rounded up to 1 GiB (`pc_pci_hole64_start`), and its size is what libvirt's `<pcihole64>` sets
(gpupass's MMIO window).

A vCPU has 40 physical address bits (1 TiB) unless told otherwise: QEMU's default for named CPU models is
TCG_PHYS_ADDR_BITS = 40 (target/i386/cpu.h). `-cpu host` (libvirt `host-passthrough`) takes the host's bits
(target/i386/host-cpu.c, `host_cpu_max_instance_init` sets "host-phys-bits"), and libvirt's
`<maxphysaddr mode='passthrough'/>` or `mode='emulate' bits='N'` sets them explicitly (docs/formatdomain.rst,
since libvirt 8.7.0 / 9.2.0).

Not modelled: memory hotplug (`<maxMemory>` puts device memory before the hole and moves it up) and CXL.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gpupass.core.domain.mmio import GiB, align_up

DEFAULT_PHYS_BITS = 40  # TCG_PHYS_ADDR_BITS, target/i386/cpu.h
# hw/i386/pc.c: on AMD vCPUs (q35 machine types from 7.1) RAM above 4 GiB moves to 1 TiB when the highest
# address would reach the HyperTransport range at 1012 GiB, which then needs more than 40 bits.
AMD_HT_START = 1012 * GiB
# Where RAM is split below 4 GiB: hw/i386/pc_q35.c splits at 2 GiB (always from pc-q35-4.1, "gigabyte_split");
# hw/i386/pc_piix.c at 3 GiB when RAM reaches 3.5 GiB (gigabyte_align).
Q35_LOW_RAM = 2 * GiB
PC_LOW_RAM = 3 * GiB
HOST = "host"


def guest_phys_bits(domain: ET.Element) -> int | str:
    """The vCPU's physical address bits from a domain definition: a number, or HOST for the host's."""
    cpu = domain.find("cpu")
    if cpu is None:
        return DEFAULT_PHYS_BITS
    maxphysaddr = cpu.find("maxphysaddr")
    if maxphysaddr is not None:
        if maxphysaddr.get("mode") == "passthrough":
            return HOST
        bits = maxphysaddr.get("bits")
        if maxphysaddr.get("mode") == "emulate" and bits and bits.isdigit():
            return int(bits)
    if cpu.get("mode") == "host-passthrough":
        return HOST
    return DEFAULT_PHYS_BITS


def highest_guest_address(memory_bytes: int, window_bytes: int, machine: str) -> int:
    """The last byte of the 64-bit PCI hole QEMU places after the VM's RAM (pc_max_used_gpa)."""
    low = Q35_LOW_RAM if "q35" in machine else PC_LOW_RAM
    above_4g = max(0, memory_bytes - low)
    hole64_start = align_up(4 * GiB + above_4g, GiB)
    return hole64_start + window_bytes - 1


def reachable(bits: int) -> int:
    """The highest address a vCPU with `bits` physical address bits reaches."""
    return (1 << bits) - 1
