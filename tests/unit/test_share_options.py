"""Platform-only share settings (AssignOptions.ex_share_options, `--share-option NAME=VALUE`): only with a share, and
only the names the platform's backend lists in Capabilities.ex_share_options; anything else is "not supported on X"."""
from __future__ import annotations

import pytest

from gpupass.backends.esxi.backend import EsxiBackend
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions
from gpupass.core.errors import NotSupported, UsageError
from gpupass.core.service import check_capabilities


def request(**options):
    return AssignmentRequest("vm", (PciAddress.parse("41:00.0"),), AssignOptions(share="partitions-4", **options))


@pytest.mark.parametrize("backend", [KvmBackend, EsxiBackend])
def test_platforms_without_share_options_refuse_them(backend):
    with pytest.raises(NotSupported, match=f"not supported on {backend.platform}") as refused:
        check_capabilities(backend, request(ex_share_options={"MinPartitionVRAM": "1"}))
    assert "takes no share options" in refused.value.remedy


def test_hyperv_takes_its_partition_settings_in_any_case_and_nothing_else():
    check_capabilities(HypervBackend, request(ex_share_options={"minpartitionvram": "1", "MaxPartitionCompute": "2"}))
    with pytest.raises(NotSupported, match="'PartitionCount' is not supported on hyperv"):
        check_capabilities(HypervBackend, request(ex_share_options={"PartitionCount": "4"}))


def test_share_options_need_a_share():
    with pytest.raises(UsageError, match="no --share"):
        AssignOptions(ex_share_options={"MinPartitionVRAM": "1"})
    with pytest.raises(UsageError, match="NAME=VALUE"):
        AssignOptions(share="partitions-4", ex_share_options={" ": "1"})
