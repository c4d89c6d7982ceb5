import pytest

from gpupass.core.domain.mmio import GiB, MiB, MmioPolicy, mmio_need, next_power_of_two, packed_size, parse_size
from gpupass.core.domain.pci import Bar
from gpupass.core.errors import UsageError

A100_40 = (Bar(0, 16 * MiB, False), Bar(1, 64 * GiB, True), Bar(3, 32 * MiB, True))
H100 = (Bar(0, 16 * MiB, False), Bar(1, 128 * GiB, True), Bar(3, 32 * MiB, True))
T4 = (Bar(0, 16 * MiB, False), Bar(1, 256 * MiB, True), Bar(3, 32 * MiB, True))


def test_power_of_two():
    assert [next_power_of_two(v) for v in (0, 1, 2, 3, 5, 64 * GiB, 64 * GiB + 1)] == [1, 1, 2, 4, 8, 64 * GiB,
                                                                                        128 * GiB]


def test_each_bar_is_aligned_to_its_own_size():
    # 32M then 64G: placed largest first there is no padding; the total is the sum.
    assert packed_size([32 * MiB, 64 * GiB]) == 64 * GiB + 32 * MiB
    # Two 3 MiB regions occupy 4 MiB slots each when aligned to their power-of-two size.
    assert packed_size([3 * MiB, 3 * MiB]) == 4 * MiB + 3 * MiB


def test_need_of_one_a100_rounds_up_past_its_64g_bar():
    need = mmio_need(A100_40)
    assert need.high == 128 * GiB
    assert need.low == 16 * MiB
    assert need.is_large


def test_need_of_two_h100s_and_a_t4():
    need = mmio_need(H100 + H100 + T4)
    assert need.high == 512 * GiB
    assert not mmio_need(T4).is_large


def test_esxi_style_policy_keeps_default_when_the_need_fits():
    policy = MmioPolicy(default_window=32 * GiB, granularity=GiB)
    t4 = mmio_need(T4)
    assert policy.fits(t4, None)
    assert policy.window_for(t4) == 32 * GiB
    assert not policy.fits(mmio_need(A100_40), None)
    assert policy.window_for(mmio_need(A100_40)) == 128 * GiB


def test_a_budget_for_unconfigured_vms_counts_every_bar():
    """ESXi without pciPassthru.use64bitMMIO: 917504 pages of 4 KiB for all passthrough BARs (Dell KB
    000199172's vmware.log); a 16 GiB-BAR card fits the 32 GB window but not that budget."""
    policy = MmioPolicy(default_window=32 * GiB, granularity=GiB, budget_without_window=917504 * 4096)
    sixteen = mmio_need([Bar(0, 16 * MiB, False), Bar(1, 16 * GiB, True), Bar(3, 32 * MiB, True)])
    assert not policy.fits(sixteen, None)
    assert policy.fits(sixteen, 32 * GiB)
    assert policy.window_for(sixteen) == 32 * GiB
    assert policy.effective_window(None) == 917504 * 4096 == 3584 * MiB
    assert policy.fits(mmio_need(T4), None)  # 304 MiB
    assert not policy.fits(mmio_need([Bar(1, 4 * GiB, True)]), None)  # already over 3.5 GiB


def test_hyperv_style_policy_adds_headroom_without_rounding():
    policy = MmioPolicy(default_window=512 * MiB, headroom=512 * MiB, power_of_two=False, granularity=MiB)
    k520 = mmio_need([Bar(1, 128 * MiB, True), Bar(3, 32 * MiB, True), Bar(5, 16 * MiB, True)])
    assert policy.window_for(k520) == 176 * MiB + 512 * MiB == k520.high_packed + 512 * MiB
    assert not policy.fits(k520, 512 * MiB)
    assert policy.fits(k520, 2 * GiB)


@pytest.mark.parametrize("text, size", [("64G", 64 * GiB), ("64GiB", 64 * GiB), ("512m", 512 * MiB),
                                        ("1024", 1024), ("1T", 1 << 40)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_rejects_garbage():
    with pytest.raises(UsageError):
        parse_size("lots")
