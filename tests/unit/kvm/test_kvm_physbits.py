"""Guest physical address bits, as QEMU's pc_memory_init checks them (backends/kvm/physbits.py)."""

import xml.etree.ElementTree as ET

import pytest

from gpupass.backends.kvm import physbits
from gpupass.core.domain.mmio import GiB


@pytest.mark.parametrize("cpu, bits", [
    ("", 40),
    ("<cpu mode='custom'><model>EPYC</model></cpu>", 40),
    ("<cpu mode='host-model'/>", 40),
    ("<cpu mode='host-passthrough'/>", "host"),
    ("<cpu mode='host-passthrough'><maxphysaddr mode='passthrough'/></cpu>", "host"),
    ("<cpu mode='custom'><model>EPYC</model><maxphysaddr mode='emulate' bits='46'/></cpu>", 46),
])
def test_phys_bits_come_from_the_cpu_element(cpu, bits):
    assert physbits.guest_phys_bits(ET.fromstring(f"<domain>{cpu}</domain>")) == bits


def test_the_64_bit_hole_follows_the_ram_above_4g():
    # q35 splits RAM at 2 GiB: 64 GiB of RAM ends at 66 GiB, where the 32 GiB default hole starts.
    assert physbits.highest_guest_address(64 * GiB, 32 * GiB, "pc-q35-8.2") == 98 * GiB - 1
    # Eight A100 80GB need a 2 TiB window (issue 8): far beyond 40 bits (1 TiB) even with little RAM.
    assert physbits.highest_guest_address(16 * GiB, 2048 * GiB, "q35") > physbits.reachable(40)
    assert physbits.highest_guest_address(16 * GiB, 2048 * GiB, "q35") < physbits.reachable(46)
