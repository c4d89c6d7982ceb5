"""The catalog of known GPUs: every BAR layout names the published output it comes from; nothing is guessed."""

from gpupass.core.domain import catalog
from gpupass.core.domain.mmio import GiB, MiB


def test_every_layout_names_its_source_and_unsourced_cards_stay_unknown():
    for gpu in catalog.known_gpus():
        assert gpu.source, gpu.name
        if gpu.bars is None:
            assert "unknown" in gpu.source, gpu.name
        elif gpu.bars:
            assert gpu.source.startswith("https://") or "field notes" in gpu.source, gpu.name


def test_layouts_read_from_published_outputs():
    def sizes(device_id, vendor=catalog.NVIDIA):
        return tuple(bar.size for bar in catalog.lookup(vendor, device_id).bars)

    assert sizes(0x20F1) == (16 * MiB, 64 * GiB, 32 * MiB)      # A100 PCIe 40GB, kernel log in kata #4358
    assert sizes(0x1DB1) == (16 * MiB, 16 * GiB, 32 * MiB)      # V100 SXM2 16GB
    assert sizes(0x2684) == (16 * MiB, 32 * GiB, 32 * MiB)      # RTX 4090 with Resizable BAR
    assert sizes(0x2329) == (16 * MiB, 128 * GiB, 32 * MiB)     # H20
    assert all(bar.is_64bit for bar in catalog.lookup(catalog.NVIDIA, 0x2329).bars)
    assert sizes(0x56A0, catalog.INTEL) == (16 * MiB, 16 * GiB)  # Arc A770


def test_cards_without_a_published_layout_are_known_by_name_only():
    for device_id in (0x26B9, 0x2236, 0x2235, 0x2230, 0x27B8, 0x26B5, 0x2204, 0x2321, 0x1DB4):
        known = catalog.lookup(catalog.NVIDIA, device_id)
        assert known is not None and known.bars is None
