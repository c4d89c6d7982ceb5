"""Known GPUs: names and BAR layouts from published sources, for hosts that cannot report BAR sizes.

Every layout names where it was read: a published `lspci -v`/`-vv` listing or kernel log of the card's BARs, or
NVIDIA's product brief ("BAR address (Physical Function)"). A card without such a source keeps `bars=None`: gpupass
then says the BARs are unknown and asks for `--bar-size`, instead of guessing; so does a card whose source gives only
some of its BARs (V100 PCIe: BAR0 and BAR1 but not the third), since a partial layout would undersize the window.
Cards that still lack a published layout (as of this catalog): A16, A2, A30, A40, L4, L40, H200, H100 NVL,
RTX A6000, RTX 3090, V100 PCIe, V100S, AMD Instinct (MI210, MI250/MI250X, MI300X) and Intel Data Center GPU Max and
Flex; they are listed by name (device ids from pci.ids or a published listing) with their BARs unknown.
docs/gpu-catalog.md lists every entry with its source. Read them from the host instead (sysfs
`resource` on a local KVM host, the memory ranges Windows reports on Hyper-V: gpupass does both) or pass every BAR
with `--bar-size ADDR=16M+64G+32M`.

Consumer cards with Resizable BAR report the size the firmware chose: the entry keeps the largest size seen in
a published output, because a window sized for the large BAR also holds the small one.
"""

from __future__ import annotations

from gpupass.core.domain.mmio import GiB, MiB
from gpupass.core.domain.pci import Bar
from gpupass.core.records import record

NVIDIA = 0x10DE
INTEL = 0x8086
AMD = 0x1002


@record(frozen=True)
class KnownGpu:
    vendor_id: int
    device_id: int
    name: str
    family: str
    bars: tuple[Bar, ...] | None = None
    # Where the BAR layout was read (URL of the published output), or why there is none.
    source: str = ""


def _nvidia(device_id: int, name: str, family: str, bar0: int | None = None, bar1: int | None = None,
            bar3: int | None = None, source: str = "", bar0_64bit: bool = False) -> KnownGpu:
    """NVIDIA's usual layout: BAR0 registers, BAR1 the framebuffer aperture, BAR3 (lspci region 3) 32 MiB."""
    bars = None
    if bar0 is not None and bar1 is not None and bar3 is not None:
        bars = (Bar(0, bar0, is_64bit=bar0_64bit), Bar(1, bar1, is_64bit=True), Bar(3, bar3, is_64bit=True))
    return KnownGpu(NVIDIA, device_id, name, family, bars, source)


_NO_OUTPUT = "no published lspci/kernel output of its BARs found: unknown"
# Device ids (and names) of cards listed by name only, or whose published output names the card but not its id.
_PCI_IDS = "device id from pci.ids (pciutils/pciids @c1c12547d626ebf05fd0223144ad87fab5e95d06)"
# Layouts carried over from docs/field notes (public data) and not yet re-checked against a published output.
_FIELD_NOTES = "gpupass field notes, 'Real GPU data' (not re-checked against a published output)"
# NVIDIA's data-center product briefs give a "BAR address (Physical Function)" table. The briefs themselves were not
# at hand; this post quotes them with their links (sizes in MB/GB as printed there, i.e. MiB/GiB):
_DENNEMAN = ("F. Denneman, 'vSphere ML Accelerator Spectrum Deep Dive - ESXi Host BIOS, VM, and vCenter Settings' "
             "(2023-05-30), https://github.com/frankdenneman/frankdenneman.github.io/blob/"
             "22fc43f7707169ef5a99af520e8ce1985003b626/content/posts/2023-05-30-vsphere-ml-accelerator-spectrum-deep-"
             "dive-esxi-host-bios-vm-and-vcenter-settings/index.md")

_KNOWN = [
    _nvidia(0x1EB8, "NVIDIA Tesla T4", "Turing", 16 * MiB, 256 * MiB, 32 * MiB,
            "BAR0 16 MB, BAR1 256 MB, third BAR 32 MB (the post's table calls it BAR2, its text BAR3): NVIDIA T4 "
            f"product brief (nvidia.com .../tesla-t4/t4-tensor-core-product-brief.pdf) as quoted by {_DENNEMAN}"),
    _nvidia(0x1E30, "NVIDIA Quadro RTX 6000/8000", "Turing", 16 * MiB, 256 * MiB, 32 * MiB,
            "https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/480 (lspci -vvvv, Quadro RTX 8000)"),
    _nvidia(0x1B80, "NVIDIA GeForce GTX 1080", "Pascal", 16 * MiB, 256 * MiB, 32 * MiB,
            "https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/123 (lspci -vvvv)"),
    _nvidia(0x1DB1, "NVIDIA Tesla V100 SXM2 16GB", "Volta", 16 * MiB, 16 * GiB, 32 * MiB,
            "https://github.com/ComputeCanada/puppet-magic_castle/issues/268 (lspci -v)"),
    # BAR0 16 MB and BAR1 16 GB are in the V100 PCIe product brief as quoted by Denneman, but not its third BAR:
    # a partial layout would undersize the window, so the card stays unknown.
    _nvidia(0x1DB4, "NVIDIA Tesla V100 PCIe 16GB", "Volta",
            source=f"BAR0 16 MB, BAR1 16 GB, third BAR not given ({_DENNEMAN}): unknown"),
    _nvidia(0x1DF6, "NVIDIA Tesla V100S PCIe 32GB", "Volta", source=_NO_OUTPUT),
    _nvidia(0x2236, "NVIDIA A10", "Ampere", 16 * MiB, 32 * GiB, 32 * MiB,
            "https://github.com/sscargal/stevescargall.com.v2/blob/6b3bb6f03b91b7bc806dcfe3b520c66d460e079d/content/"
            f"english/blog/2024/08/benchmarking-gpus-measuring-throughput-between-cpu-and-gpu/index.md (lspci -vvv); "
            f"{_PCI_IDS}"),
    _nvidia(0x2235, "NVIDIA A40", "Ampere", source=_NO_OUTPUT),
    _nvidia(0x2230, "NVIDIA RTX A6000", "Ampere", source=_NO_OUTPUT),
    _nvidia(0x24B0, "NVIDIA RTX A4000", "Ampere", 16 * MiB, 256 * MiB, 32 * MiB,
            "https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/692 (lspci -vv)"),
    _nvidia(0x20F1, "NVIDIA A100 PCIe 40GB", "Ampere", 16 * MiB, 64 * GiB, 32 * MiB,
            "https://github.com/kata-containers/kata-containers/pull/4358 (kernel log: reg 0x10 16M, reg 0x14 "
            "0x0-0xfffffffff 64bit pref, reg 0x1c 32M); the same 16 MB / 64 GB / 32 MB in NVIDIA's A100 PCIe product "
            f"brief as quoted by {_DENNEMAN}"),
    _nvidia(0x20B0, "NVIDIA A100 SXM4 40GB", "Ampere", 16 * MiB, 64 * GiB, 32 * MiB,
            "https://github.com/ComputeCanada/puppet-magic_castle/issues/268 (lspci -v)"),
    _nvidia(0x20B5, "NVIDIA A100 PCIe 80GB", "Ampere", 16 * MiB, 128 * GiB, 32 * MiB,
            "BAR0 16 MB, BAR1 128 GB: NVIDIA A100 80GB PCIe product brief PB-10577-001_v02 as quoted by "
            f"{_DENNEMAN}; BAR3 32 MiB: {_FIELD_NOTES}"),
    _nvidia(0x20B2, "NVIDIA A100 SXM4 80GB", "Ampere", 16 * MiB, 128 * GiB, 32 * MiB,
            "https://lore.kernel.org/linux-pci/CALdZjm7v3WaaS_ispa20PkjUnLq1t1Zdr29wKw_rZkQYExK-3w@mail.gmail.com/ "
            "(lspci -v in a guest given 8 x A100 80GB, linux-pci 2021-07-15)"),
    _nvidia(0x2331, "NVIDIA H100 PCIe", "Hopper", 16 * MiB, 128 * GiB, 32 * MiB,
            "BAR0 16 MB, BAR1 128 GB: NVIDIA H100 PCIe product brief PB-11133-001_v01 as quoted by "
            f"{_DENNEMAN}; BAR3 32 MiB: {_FIELD_NOTES}"),
    _nvidia(0x2330, "NVIDIA H100 SXM5 80GB", "Hopper", 16 * MiB, 128 * GiB, 32 * MiB, _FIELD_NOTES),
    # Device id from https://github.com/akash-network/provider-configs/pull/91 (nvidia-smi pci.device_id).
    _nvidia(0x2321, "NVIDIA H100 NVL", "Hopper", source=_NO_OUTPUT),
    # H20: all three BARs are 64-bit prefetchable in the published listing.
    _nvidia(0x2329, "NVIDIA H20", "Hopper", 16 * MiB, 128 * GiB, 32 * MiB,
            "https://github.com/NVIDIA/nvtrust/issues/128 (lspci -v, 8 x H20)", bar0_64bit=True),
    _nvidia(0x27B8, "NVIDIA L4", "Ada Lovelace", source=_NO_OUTPUT),
    _nvidia(0x26B5, "NVIDIA L40", "Ada Lovelace", source=_NO_OUTPUT),
    # Device id also in https://github.com/akash-network/provider-configs/pull/99 (lspci -nn, 2 x L40S).
    _nvidia(0x26B9, "NVIDIA L40S", "Ada Lovelace", 16 * MiB, 64 * GiB, 32 * MiB,
            "https://github.com/cloud-hypervisor/cloud-hypervisor/blob/169a6bb83b48fc9f43a3c1c4f41e70404419872a/"
            "docs/vfio.md (lspci -v, 'NVIDIA Corporation Device 26b9')"),
    _nvidia(0x26B1, "NVIDIA RTX 6000 Ada Generation", "Ada Lovelace", 16 * MiB, 64 * GiB, 32 * MiB,
            "https://github.com/luigifcruz/stelline/blob/5abfb58163aa40435812fa5e5a06c6eff46a8917/docs/quickstart/"
            f"validated-hardware/server/asus-esc8000a-e12.md (lspci -vvv, Resizable BAR at 64GB); {_PCI_IDS}"),
    # 32 GiB BAR1 with Resizable BAR on (tinygrad #28); 256 MiB without it (geerlingguy #504).
    _nvidia(0x2684, "NVIDIA GeForce RTX 4090", "Ada Lovelace", 16 * MiB, 32 * GiB, 32 * MiB,
            "https://github.com/tinygrad/open-gpu-kernel-modules/issues/28 (lspci -v, Resizable BAR on); "
            "256M BAR1 without it: https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/504"),
    _nvidia(0x2204, "NVIDIA GeForce RTX 3090", "Ampere", source=_NO_OUTPUT),
    # Known by name only (ids from pci.ids). The A2 and the A16 share one id. The A30's brief, as quoted by
    # Denneman, gives BAR1 32 GB but not its other BARs.
    _nvidia(0x25B6, "NVIDIA A2 / A16", "Ampere", source=f"{_NO_OUTPUT}; {_PCI_IDS}"),
    _nvidia(0x20B7, "NVIDIA A30", "Ampere", source=f"BAR1 32 GB, other BARs not given ({_DENNEMAN}): unknown; "
            f"{_PCI_IDS}"),
    _nvidia(0x2335, "NVIDIA H200 SXM 141GB", "Hopper", source=f"{_NO_OUTPUT}; {_PCI_IDS}"),
    _nvidia(0x233B, "NVIDIA H200 NVL", "Hopper", source=f"{_NO_OUTPUT}; {_PCI_IDS}"),
    _nvidia(0x2F04, "NVIDIA Blackwell 10de:2f04", "Blackwell", 64 * MiB, 16 * GiB, 32 * MiB, _FIELD_NOTES),
    # Intel Arc (DG2): BAR0 16 MiB 64-bit non-prefetchable, BAR2 the local memory (16 GiB with Resizable BAR).
    KnownGpu(INTEL, 0x56A0, "Intel Arc A770", "Alchemist",
             (Bar(0, 16 * MiB, is_64bit=True), Bar(2, 16 * GiB, is_64bit=True)),
             "https://github.com/ProjectPhysX/OpenCL-Benchmark/pull/19 (lspci -vvv)"),
    # Processing accelerators (class 1200h). Ids from the AMD GPU Operator's KubeVirt guide (lspci -nnk of a
    # host), tests/fixtures/real/kvm/rocm-gpu-operator-kubevirt-mi300x.txt; no published BAR layout.
    KnownGpu(AMD, 0x74A1, "AMD Instinct MI300X", "CDNA 3", None, _NO_OUTPUT),
    KnownGpu(AMD, 0x74B5, "AMD Instinct MI300X VF", "CDNA 3", None, _NO_OUTPUT),
    # Known by name only: their ids are in pci.ids, their BARs in no published output found yet.
    KnownGpu(AMD, 0x740F, "AMD Instinct MI210", "CDNA 2", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(AMD, 0x7408, "AMD Instinct MI250X", "CDNA 2", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(AMD, 0x740C, "AMD Instinct MI250X/MI250", "CDNA 2", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(INTEL, 0x0BD5, "Intel Data Center GPU Max 1550", "Ponte Vecchio", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(INTEL, 0x0BDA, "Intel Data Center GPU Max 1100", "Ponte Vecchio", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(INTEL, 0x56C0, "Intel Data Center GPU Flex 170", "Arctic Sound-M", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(INTEL, 0x56C1, "Intel Data Center GPU Flex 140", "Arctic Sound-M", None, f"{_NO_OUTPUT}; {_PCI_IDS}"),
    KnownGpu(NVIDIA, 0x22BA, "NVIDIA AD102 High Definition Audio", "Ada Lovelace", (),
             "HDMI audio companion: its small BAR is not counted"),
    KnownGpu(NVIDIA, 0x228B, "NVIDIA GA102 High Definition Audio", "Ampere", (),
             "HDMI audio companion: its small BAR is not counted"),
]

_BY_IDS = {(gpu.vendor_id, gpu.device_id): gpu for gpu in _KNOWN}


def lookup(vendor_id: int, device_id: int) -> KnownGpu | None:
    return _BY_IDS.get((vendor_id & 0xFFFF, device_id & 0xFFFF))


def known_gpus() -> list[KnownGpu]:
    return list(_KNOWN)
