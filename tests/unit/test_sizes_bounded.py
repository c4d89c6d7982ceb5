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
