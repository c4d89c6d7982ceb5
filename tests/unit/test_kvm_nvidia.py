"""NVIDIA's vGPU manager facts gpupass reads on a KVM host (backends/kvm/nvidia.py), held to real published outputs
(tests/fixtures/real/sharing): MIG mode from `nvidia-smi -q`, a VF's creatable_vgpu_types and current_vgpu_type."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpupass.backends.kvm import nvidia
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.sharing import ShareMode, ShareType, mig_backed
from gpupass.core.errors import OperationFailed, UsageError

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "sharing"


def published(name: str) -> str:
    """The output as published, without the source lines and the shell prompts gpupass never sees."""
    return "\n".join(line for line in (CORPUS / name).read_text().splitlines()
                     if not line.startswith(("# ", "$ ", "[...]")))


def test_mig_mode_per_gpu_from_the_real_query_report():
    text = published("nvidia-smi-q-mig-disabled-a100-k8s-device-plugin-343.txt")
    assert nvidia.mig_modes(text) == {PciAddress.parse("0000:07:00.0"): False}


def test_mig_mode_from_the_real_lines_of_one_gpu():
    text = published("nvidia-smi-q-mig-enabled-opennebula.txt")
    assert nvidia.mig_modes(text) == {None: True}
    assert nvidia.bus_id("00000000:e1:00.0") == PciAddress.parse("0000:e1:00.0")


def test_mig_mode_not_applicable_and_missing_blocks():
    text = "GPU 00000000:41:00.0\n    MIG Mode\n        Current                           : N/A\n" \
           "        Pending                           : N/A\nGPU 00000000:42:00.0\n    Product Name : X\n"
    assert nvidia.mig_modes(text) == {PciAddress.parse("0000:41:00.0"): None}


def test_creatable_types_from_the_real_output_and_a_header():
    text = (CORPUS / "creatable-vgpu-types-h200x-kubevirt-plugin.txt").read_text()
    listed = text.split("creatable_vgpu_types\n", 1)[1].split("\n\n", 1)[0]
    assert nvidia.creatable_types(listed) == (("1428", "NVIDIA H200X-141C"), ("1414", "NVIDIA H200X-1-18C"))
    # a full card lists only its header (NVIDIA kubevirt-gpu-device-plugin README, "NVML fallback")
    assert nvidia.creatable_types("ID    : vGPU Name\n") == ()


def test_mig_backed_types_are_told_from_time_sliced_ones_by_name():
    def kind(name: str) -> bool | None:
        return mig_backed(ShareType(name, name, ShareMode.VF_VGPU))

    assert kind("NVIDIA H200X-1-18C") is True and kind("NVIDIA A100-4-20C") is True
    assert kind("NVIDIA H200X-141C") is False and kind("GRID P40-1Q") is False and kind("NVIDIA A10-2B") is False
    assert kind("sriov-vf") is None and kind("partitions-4") is None and kind("nvidia-46") is None


def _vf(root: Path, address: str, creatable: str, current: str) -> None:
    folder = root / address / "nvidia"
    folder.mkdir(parents=True)
    (folder / "creatable_vgpu_types").write_text(creatable)
    (folder / "current_vgpu_type").write_text(current + "\n")


def test_a_vfs_type_is_read_written_and_read_back(tmp_path):
    _vf(tmp_path, "0000:41:00.4", "1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C\n", "0")
    vf = PciAddress.parse("0000:41:00.4")
    state = nvidia.read_vf_vgpu(vf, tmp_path)
    assert state is not None and state.current is None and [t for t, _ in state.creatable] == ["1428", "1414"]
    nvidia.write_vf_vgpu_type(vf, "1414", tmp_path)
    assert nvidia.read_vf_vgpu(vf, tmp_path).current == "1414"
    nvidia.write_vf_vgpu_type(vf, nvidia.UNSET, tmp_path)
    assert nvidia.read_vf_vgpu(vf, tmp_path).current is None
    assert nvidia.read_vf_vgpu(PciAddress.parse("0000:41:00.5"), tmp_path) is None  # no nvidia/ folder
    with pytest.raises(UsageError, match="not a numeric type ID"):
        nvidia.write_vf_vgpu_type(vf, "1414; reboot", tmp_path)


def test_a_refused_write_is_a_clear_error(tmp_path):
    _vf(tmp_path, "0000:41:00.4", "", "0")
    (tmp_path / "0000:41:00.4" / "nvidia" / "current_vgpu_type").unlink()
    (tmp_path / "0000:41:00.4" / "nvidia" / "current_vgpu_type").mkdir()  # any OSError the driver gives
    with pytest.raises(OperationFailed, match="refused vGPU type 1414 on virtual function 0000:41:00.4"):
        nvidia.write_vf_vgpu_type(PciAddress.parse("0000:41:00.4"), "1414", tmp_path)


def test_mig_modes_are_read_from_a_real_nvidia_smi_process(tmp_path, monkeypatch):
    """`nvidia-smi -q` run as a process (a stand-in program on PATH printing the real report); none: unknown."""
    program = tmp_path / "nvidia-smi"
    report = tmp_path / "report.txt"
    report.write_text(published("nvidia-smi-q-mig-disabled-a100-k8s-device-plugin-343.txt"))
    program.write_text(f"#!/bin/sh\n[ \"$1\" = -q ] && exec cat {report}\nexit 3\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nvidia.read_mig_modes() == {PciAddress.parse("0000:07:00.0"): False}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert nvidia.read_mig_modes() == {}
