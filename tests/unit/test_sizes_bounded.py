"""--bar-size is bounded: more than 0, at most the x86-64 physical address space, per BAR and per card."""

import pytest
from click.testing import CliRunner

from gpupass.core.cli.main import cli
from gpupass.core.domain.mmio import MAX_BAR_BYTES, parse_size
from gpupass.core.errors import UsageError


@pytest.mark.parametrize("text, size", [("64G", 64 << 30), ("16MiB", 16 << 20), ("4096T", MAX_BAR_BYTES), ("1", 1)])
def test_sizes_in_range(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, message", [
    ("0", "'0' is zero"), ("0G", "is zero"), ("99999999999999999999T", "larger than any BAR can be"),
    ("4097T", "larger than any BAR can be"), ("9" * 5000, "is not a size"), ("\u0663G", "is not a size"),
    ("-1G", "is not a size"), ("", "is not a size"),
])
def test_sizes_out_of_range_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message) as caught:
        parse_size(text)
    assert len(caught.value.message) < 120


@pytest.mark.parametrize("value, message", [
    ("41:00.0=99999999999999999999T", "larger than any BAR can be"), ("41:00.0=0", "'0' is zero"),
    ("41:00.0=4096T+4096T", "adds up to more than 4096 TiB"),
])
def test_the_cli_refuses_them_with_exit_2(fake_host, value, message):
    result = CliRunner().invoke(cli, ["plan", "fake://lab", "ml-train", "41:00.0", "--bar-size", value])
    assert result.exit_code == 2 and message in result.output and result.exception.__class__ is SystemExit


# A BAR decodes a power-of-two size (PCI Local Bus Specification 3.0, 6.2.5.1; Linux drivers/pci/probe.c pci_size():
# `size & ~(size - 1)`), so 3M or 48G is a typing slip, refused before it sizes an MMIO window.
@pytest.mark.parametrize("value, message", [
    ("41:00.0=3M", "3 MiB (3145728 bytes) is not a power of two"),
    ("41:00.0=16M+48G+32M", "48 GiB (51539607552 bytes) is not a power of two"),
    ("41:00.0=1000", "1000 B (1000 bytes) is not a power of two"),
])
def test_a_bar_size_that_is_not_a_power_of_two_is_refused_with_exit_2(fake_host, value, message):
    result = CliRunner().invoke(cli, ["plan", "fake://lab", "ml-train", "41:00.0", "--bar-size", value])
    assert result.exit_code == 2 and message in result.output and result.exception.__class__ is SystemExit
    assert "lspci -vv" in result.output


@pytest.mark.parametrize("sizes", [3 << 20, (16 << 20, 3.5), (True,), ("16M",), (0,), (1 << 52, 1 << 52)])
def test_the_python_api_refuses_the_same_sizes(sizes):
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.domain.request import AssignOptions

    with pytest.raises(UsageError, match="--bar-size for 0000:41:00.0"):
        AssignOptions(bar_sizes={PciAddress.parse("41:00.0"): sizes})


def test_powers_of_two_from_one_byte_to_the_whole_space_are_taken():
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.domain.request import AssignOptions

    address = PciAddress.parse("41:00.0")
    for shift in range(53):
        assert AssignOptions(bar_sizes={address: 1 << shift}).bar_sizes == {address: (1 << shift,)}
