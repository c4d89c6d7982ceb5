"""Known GPUs: names and BAR layouts from public data, for hosts that cannot report BAR sizes."""

from __future__ import annotations

from dataclasses import dataclass

from gpupass.core.domain.mmio import GiB, MiB
from gpupass.core.domain.pci import Bar

NVIDIA = 0x10DE


@dataclass(frozen=True)
class KnownGpu:
    vendor_id: int
    device_id: int
    name: str
    family: str
    bars: tuple[Bar, ...] | None = None


def _nvidia(device_id: int, name: str, family: str, bar0: int | None = None, bar1: int | None = None,
            bar3: int | None = None) -> KnownGpu:
    bars = None
    if bar0 is not None:
        bars = (Bar(0, bar0, is_64bit=False), Bar(1, bar1, is_64bit=True), Bar(3, bar3, is_64bit=True))
    return KnownGpu(NVIDIA, device_id, name, family, bars)


_KNOWN = [
    _nvidia(0x1EB8, "NVIDIA Tesla T4", "Turing", 16 * MiB, 256 * MiB, 32 * MiB),
    _nvidia(0x1DB4, "NVIDIA Tesla V100 PCIe 16GB", "Volta"),
    _nvidia(0x1DF6, "NVIDIA Tesla V100S PCIe 32GB", "Volta"),
    _nvidia(0x2236, "NVIDIA A10", "Ampere"),
    _nvidia(0x2235, "NVIDIA A40", "Ampere"),
    _nvidia(0x2230, "NVIDIA RTX A6000", "Ampere"),
    _nvidia(0x20F1, "NVIDIA A100 PCIe 40GB", "Ampere", 16 * MiB, 64 * GiB, 32 * MiB),
    _nvidia(0x20B5, "NVIDIA A100 PCIe 80GB", "Ampere", 16 * MiB, 128 * GiB, 32 * MiB),
    _nvidia(0x20B2, "NVIDIA A100 SXM4 80GB", "Ampere", 16 * MiB, 128 * GiB, 32 * MiB),
    _nvidia(0x2331, "NVIDIA H100 PCIe", "Hopper", 16 * MiB, 128 * GiB, 32 * MiB),
    _nvidia(0x2330, "NVIDIA H100 SXM5 80GB", "Hopper", 16 * MiB, 128 * GiB, 32 * MiB),
    _nvidia(0x27B8, "NVIDIA L4", "Ada Lovelace"),
    _nvidia(0x26B5, "NVIDIA L40", "Ada Lovelace"),
    _nvidia(0x2684, "NVIDIA GeForce RTX 4090", "Ada Lovelace"),
    _nvidia(0x2204, "NVIDIA GeForce RTX 3090", "Ampere"),
    _nvidia(0x2F04, "NVIDIA Blackwell 10de:2f04", "Blackwell", 64 * MiB, 16 * GiB, 32 * MiB),
    KnownGpu(NVIDIA, 0x22BA, "NVIDIA AD102 High Definition Audio", "Ada Lovelace", ()),
    KnownGpu(NVIDIA, 0x228B, "NVIDIA GA102 High Definition Audio", "Ampere", ()),
]

_BY_IDS = {(gpu.vendor_id, gpu.device_id): gpu for gpu in _KNOWN}


def lookup(vendor_id: int, device_id: int) -> KnownGpu | None:
    return _BY_IDS.get((vendor_id & 0xFFFF, device_id & 0xFFFF))


def known_gpus() -> list[KnownGpu]:
    return list(_KNOWN)
