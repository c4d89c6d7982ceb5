"""What NVIDIA's vGPU manager says about a KVM host's GPUs beyond libvirt: MIG mode and per-VF vGPU types.

Both are read on the host itself only (a `qemu:///system` connection from the host): libvirt reports neither.

- MIG mode: `nvidia-smi -q` prints, per GPU (a "GPU 00000000:07:00.0" heading), "MIG Mode" with "Current" and
  "Pending" lines ("Enabled" / "Disabled"; "N/A" on a GPU without MIG). Real outputs:
  tests/fixtures/real/sharing/nvidia-smi-q-mig-mode-*.txt.
- Per-VF vGPU (vGPU 17+ on Ada, Hopper, Blackwell: the "vendor-specific VFIO framework", no mediated devices): each
  SR-IOV VF of the GPU has `/sys/bus/pci/devices/VF/nvidia/creatable_vgpu_types`, one "ID : name" line per type
  that can be set on it now ("1414 : NVIDIA H200X-1-18C"; the list shrinks as the card's capacity is used and is
  only its header on a full card), and `nvidia/current_vgpu_type`, the type set on it ("0": none). Writing a type's
  ID to current_vgpu_type makes the VF a vGPU of that type; writing 0 takes it back. Sources: NVIDIA's
  kubevirt-gpu-device-plugin README and pkg/device_plugin/vfio_vgpu.go ("vGPU-capable VFs stay bound to the nvidia
  host driver"), real output in tests/fixtures/real/sharing/creatable-vgpu-types-h200x-kubevirt-plugin.txt.
"""

from __future__ import annotations

import re
from pathlib import Path

from gpupass.core.domain.pci import PciAddress
from gpupass.core.errors import OperationFailed, UsageError
from gpupass.core.records import record

SYSFS_PCI = Path("/sys/bus/pci/devices")
UNSET = "0"

# Patterns, compiled (and cached by `re`) on first use: a `gpus` of a host without NVIDIA vGPU never needs them.
_GPU_HEADING = r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\s*$"
_FIELD = r"^\s+(\w[\w ]*?)\s*:\s*(.*?)\s*$"
_CREATABLE = r"^\s*(\d+)\s*:\s*(.+?)\s*$"


def bus_id(text: str) -> PciAddress:
    """nvidia-smi's bus id ("00000000:07:00.0": an 8-digit domain) as a PCI address."""
    domain, _, rest = text.partition(":")
    return PciAddress.parse(f"{int(domain, 16):04x}:{rest}")


def mig_modes(query: str) -> dict[PciAddress | None, bool | None]:
    """MIG mode "Current" per GPU from `nvidia-smi -q` text: True enabled, False disabled, None not applicable.
    Text without a "GPU ..." heading (one GPU's lines, `nvidia-smi -i 0 -q | grep ...`) is keyed None."""
    modes: dict[PciAddress | None, bool | None] = {}
    gpu: PciAddress | None = None
    in_mig = False
    for line in query.splitlines():
        heading = re.match(_GPU_HEADING, line)
        if heading:
            gpu, in_mig = bus_id(heading[1]), False
            continue
        if line.strip() == "MIG Mode":
            in_mig = True
            continue
        if in_mig:
            field = re.match(_FIELD, line)
            if field and field[1] == "Current":
                modes[gpu] = {"Enabled": True, "Disabled": False}.get(field[2])
            in_mig = field is not None and field[1] == "Pending"
    return modes


def read_mig_modes(timeout: float = 10.0) -> dict[PciAddress | None, bool | None]:
    """`nvidia-smi -q` on this machine; {} where nvidia-smi is missing or fails (MIG mode then stays unknown)."""
    import shutil
    import subprocess  # here: a `gpus` of a host with no NVIDIA vGPU card never runs it

    program = shutil.which("nvidia-smi")
    if program is None:
        return {}
    try:
        done = subprocess.run([program, "-q"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return mig_modes(done.stdout) if done.returncode == 0 else {}


@record(frozen=True)
class VfVgpu:
    """One VF's vGPU state: the types that can be set on it now (id -> name) and the one set (None: none)."""

    creatable: tuple[tuple[str, str], ...]
    current: str | None


def creatable_types(text: str) -> tuple[tuple[str, str], ...]:
    """`creatable_vgpu_types`: "ID : name" lines; a header line ("ID    : vGPU Name") has no numeric id."""
    return tuple((m[1], m[2]) for line in text.splitlines() if (m := re.match(_CREATABLE, line)))


def read_vf_vgpu(vf: PciAddress, root: Path = SYSFS_PCI) -> VfVgpu | None:
    """The VF's nvidia/ files; None where it has none (no vGPU manager, or not an NVIDIA vGPU VF)."""
    folder = root / str(vf) / "nvidia"
    try:
        creatable = (folder / "creatable_vgpu_types").read_text()
        current = (folder / "current_vgpu_type").read_text().strip()
    except OSError:
        return None
    return VfVgpu(creatable_types(creatable), None if current in ("", UNSET) else current)


def write_vf_vgpu_type(vf: PciAddress, type_id: str, root: Path = SYSFS_PCI) -> None:
    """Set (a type's ID) or clear ("0") the VF's vGPU type, and read it back: the driver refuses a type the card has
    no room for (an OSError on the write, reported with what the kernel said)."""
    if not type_id.isdigit():
        raise UsageError(f"vGPU type {type_id!r} is not a numeric type ID", remedy="use an ID creatable_vgpu_types lists")
    path = root / str(vf) / "nvidia" / "current_vgpu_type"
    try:
        path.write_text(type_id)
    except OSError as exc:  # the driver's store refused the write: the type is unchanged
        raise OperationFailed(f"the vGPU manager refused vGPU type {type_id} on virtual function {vf}: "
                              f"{exc.strerror or exc}",
                              remedy="check the card's room (creatable_vgpu_types) and that no running VM holds the VF",
                              rolled_back=True) from exc
    try:
        now = path.read_text().strip()
    except OSError as exc:  # written, then not readable: what the VF holds is for the service to read again
        raise OperationFailed(f"virtual function {vf}'s vGPU type cannot be read back after writing {type_id}: "
                              f"{exc.strerror or exc}", remedy=f"look at {path} on the host", rolled_back=None) from exc
    if now != type_id:
        raise OperationFailed(f"virtual function {vf} reads vGPU type {now or '?'} after writing {type_id}",
                              remedy=f"look at {path} on the host", rolled_back=False)
