"""Hyper-V sizes the guest MMIO from the memory ranges Windows says a GPU holds (issue 8 item 8), as Microsoft's
SurveyDDA.ps1 does (Win32_PnPAllocatedResource -> Win32_DeviceMemoryAddress); the catalog stands in, marked as an
estimate, only while the device holds none (disabled, dismounted); a card neither can size stays unknown."""
from __future__ import annotations

import pytest

from gpupass.backends.hyperv.backend import HypervBackend, memory_bars
from gpupass.backends.hyperv.lab.hostmodel import HostModel, PnpDevice, VirtualMachine, run_script
from gpupass.backends.hyperv.lab.hostmodel.cmdlets import memory_ranges
from gpupass.core import plugins
from gpupass.core.domain.mmio import GiB, MiB, mmio_need
from gpupass.core.domain.pci import Bar
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER

LOC = "PCIROOT(0)#PCI(0300)#PCI(0000)"
# An L4 (10de:27b8 in pci.ids): the catalog has no published BAR layout for it. Its BARs here are a lab
# assumption, not a real output: what the test shows is that whatever the host reports is what gpupass sizes by.
L4_IID = "PCI\\VEN_10DE&DEV_27B8&SUBSYS_16CA10DE&REV_A1\\4&1A2B3C4D&0&0018"
L4_BARS = [16 * MiB, 32 * GiB, 32 * MiB]
# An RTX 4090 with Resizable BAR off: BAR1 256M (real lspci -vvvv, geerlingguy/raspberry-pi-pcie-devices #504);
# the catalog keeps the 32G seen with Resizable BAR on (tinygrad/open-gpu-kernel-modules #28).
RTX4090_IID = "PCI\\VEN_10DE&DEV_2684&SUBSYS_40BF1458&REV_A1\\4&2C3D4E5F&0&0008"
RTX4090_BARS_REBAR_OFF = [16 * MiB, 256 * MiB, 32 * MiB]


def gpu(iid: str, bars: list[int], **kw) -> PnpDevice:
    vendor, device = (int(part[4:], 16) for part in iid.split("\\")[1].split("&")[:2])
    return PnpDevice(iid, "NVIDIA GPU", "Display", LOC, vendor, device, list(bars), bars_below_4g=1,
                     class_code=0x030200, **kw)


def host(device: PnpDevice) -> HostModel:
    return HostModel(name="BARS", devices=[device], vms=[VirtualMachine("vm1", memory_startup=16 * GiB)])


@pytest.fixture
def backend_for(endpoint_factory, tmp_path):
    def open_(model: HostModel) -> HypervBackend:
        ep = endpoint_factory(model, "basic")
        return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="bars",
                                    password=Secret(PASSWORD), options={"state_file": str(tmp_path / "s.json")}))
    return open_


def codes(plan) -> set[str]:
    return {f.code for f in plan.findings}


def test_a_card_the_catalog_cannot_size_is_sized_from_the_host(backend_for):
    model = host(gpu(L4_IID, L4_BARS))
    backend = backend_for(model)
    facts = backend.inventory()
    found = facts.gpus[0]
    assert [b.size for b in found.bars] == L4_BARS
    # BAR0 lies below 4 GiB (a 32-bit BAR must), the others above: only those count as 64-bit
    assert [b.is_64bit for b in found.bars] == [False, True, True]
    assert found.extra["bars_source"] == "host" and found.extra["mmio_bytes"] == sum(L4_BARS)
    plan = make_plan(backend, facts, AssignmentRequest("vm1", (found.address,)), plugins.default_registry())
    assert "bar-size-unknown" not in codes(plan)
    execute(backend, plan)
    vm = model.vm("vm1")
    # Hyper-V: the packed 64-bit BARs plus the 512 MB default as headroom; low MMIO 3 GB for the 32-bit BAR0
    assert (vm.high_mmio, vm.low_mmio) == (32 * GiB + 32 * MiB + 512 * MiB, 3 * GiB)


def test_the_host_wins_over_the_catalog(backend_for):
    # The catalog says 32G for a 4090's BAR1; this host runs it with Resizable BAR off, so it holds 256M.
    facts = backend_for(host(gpu(RTX4090_IID, RTX4090_BARS_REBAR_OFF))).inventory()
    assert [b.size for b in facts.gpus[0].bars] == RTX4090_BARS_REBAR_OFF
    assert facts.gpus[0].extra["bars_source"] == "host"


def test_a_disabled_gpu_holds_no_ranges_and_the_catalog_stands_in(backend_for):
    device = gpu(RTX4090_IID, RTX4090_BARS_REBAR_OFF)
    model = host(device)
    r = run_script(model, f"Disable-PnpDevice -InstanceId '{device.instance_id}' -Confirm:$false\n"
                          f"$d=Get-PnpDevice -InstanceId '{device.instance_id}'\n"
                          "@(Get-CimAssociatedInstance -InputObject $d -ResultClassName Win32_DeviceMemoryAddress).Count")
    assert (r.exit_code, r.stdout.strip()) == (0, "0")
    found = backend_for(model).inventory().gpus[0]
    # the catalog's layout (Resizable BAR on, the larger one), said to be an estimate
    assert [b.size for b in found.bars] == [16 * MiB, 32 * GiB, 32 * MiB]
    assert found.extra["bars_source"].startswith("catalog (estimated")
    assert found.extra["mmio_bytes"] is None


def test_a_disabled_card_the_catalog_cannot_size_stays_unknown(backend_for):
    model = host(gpu(L4_IID, L4_BARS, enabled=False))
    backend = backend_for(model)
    facts = backend.inventory()
    assert facts.gpus[0].bars is None and facts.gpus[0].extra["bars_source"] is None
    plan = make_plan(backend, facts, AssignmentRequest("vm1", (facts.gpus[0].address,)), plugins.default_registry())
    assert "bar-size-unknown" in codes(plan)


def test_the_model_places_ranges_as_a_firmware_would():
    a, b = gpu(L4_IID, L4_BARS), gpu(RTX4090_IID, RTX4090_BARS_REBAR_OFF)
    b.location_path = "PCIROOT(0)#PCI(0400)#PCI(0000)"
    ranges = memory_ranges(HostModel(name="x", devices=[a, b], vms=[]))
    spans = sorted((start, start + size) for rs in ranges.values() for start, size in rs)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))          # no overlap
    assert all(start % size == 0 for rs in ranges.values() for start, size in rs)   # naturally aligned
    assert [start < 4 * GiB for start, _ in ranges[a.instance_id]] == [True, False, False]


def test_memory_bars_reads_the_flattened_bounds():
    assert memory_bars([]) is None and memory_bars(None) is None
    assert memory_bars([0xF0000000, 0xF0FFFFFF, 1 << 40, (1 << 40) + GiB - 1]) == (
        Bar(0, 16 * MiB, is_64bit=False), Bar(1, GiB, is_64bit=True))
    with pytest.raises(OperationFailed, match="odd number"):
        memory_bars([1, 2, 3])
    with pytest.raises(OperationFailed, match="ends before it starts"):
        memory_bars([10, 5])


def test_a_dismounted_l40s_is_planned_from_its_published_layout(backend_for):
    """While dismounted an L40S holds no ranges, so the catalog's published layout (Cloud Hypervisor's VFIO HOWTO,
    lspci -v: 16M + 64G + 32M) sizes Hyper-V's HighMemoryMappedIoSpace for a second VM's plan."""
    l40s = PnpDevice("PCI\\VEN_10DE&DEV_26B9&SUBSYS_185110DE&REV_A1\\4&1A2B3C4D&0&0018", "NVIDIA L40S", "Display",
                     LOC, 0x10DE, 0x26B9, [16 * MiB, 64 * GiB, 32 * MiB], bars_below_4g=1, class_code=0x030200,
                     enabled=False, dismounted=True)
    backend = backend_for(host(l40s))
    found = backend.inventory().gpus[0]
    assert [b.size for b in found.bars] == [16 * MiB, 64 * GiB, 32 * MiB]
    assert found.extra["bars_source"].startswith("catalog (estimated")
    assert HypervBackend.mmio_policy.window_for(mmio_need(found.bars)) == 64 * GiB + 32 * MiB + 512 * MiB
