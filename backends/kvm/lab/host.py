"""`lab-kvm`: a libvirt test-driver host that ships with gpupass and keeps its state between commands."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Sequence

from gpupass.core.ports import Backend, LabHost
from gpupass.core.target import Target

FILE_NAME = "lab-kvm.xml"


class KvmLab(LabHost):
    name = "lab-kvm"
    platform = "kvm"
    description = "libvirt test driver: A100, H100, RTX 4090 (+audio), RTX 3090 sharing a group with SATA"

    def path(self, data_dir: Path) -> Path:
        return data_dir / "lab" / FILE_NAME

    def target(self, data_dir: Path) -> Target:
        path = self.path(data_dir)
        if not path.exists():
            self.reset(data_dir)
        return Target(uri=f"test://{path.resolve()}", name=self.name, options={"persist_test_state": True})

    def demo_steps(self, labs: Sequence[str]) -> list[tuple[str, str]]:
        return [
            ("See the GPUs, their companions, IOMMU groups and owners", "gpus lab-kvm"),
            ("See the VMs", "vms lab-kvm"),
            ("An H100 for ml-train: preflight passes", "check lab-kvm ml-train 0000:42:00.0"),
            ("The RTX 3090 shares its IOMMU group with the SATA controller: refused",
             "check lab-kvm ml-train 02:00.0"),
            ("The RTX 4090 already belongs to cad-ws: refused", "check lab-kvm ml-train 01:00.0"),
            ("render01 boots with BIOS and the A100 has a 64 GiB BAR: refused", "check lab-kvm render01 41:00.0"),
            ("The plan for ml-train: steps, MMIO window, what the VM loses",
             "plan lab-kvm ml-train 0000:42:00.0 --show-changes"),
            ("Assign it", "assign lab-kvm ml-train 0000:42:00.0 --yes"),
            ("Assigning again changes nothing", "assign lab-kvm ml-train 0000:42:00.0 --yes"),
            ("Status of the host", "status lab-kvm"),
            ("Give the H100 back to the host: the definition is restored", "release lab-kvm ml-train --yes"),
            ("Status again", "status lab-kvm"),
            ("Free vGPU capacity: the Tesla P40's GRID P40-1Q devices", "fleet find --profile P40-1Q --hosts lab-kvm"),
            ("A GRID P40-1Q vGPU share for ml-train: a free mediated device", "assign lab-kvm ml-train P40 --share P40-1Q --yes"),
            ("Give the share back: the admin's mediated device stays on the host", "release lab-kvm ml-train P40 --yes"),
            ("An SR-IOV virtual function of 00:02.0 for ml-train: a PCI device of its own, claimed like a GPU",
             "assign lab-kvm ml-train 00:02.0 --share sriov-vf --yes"),
            ("Give the virtual function back", "release lab-kvm ml-train 00:02.0 --yes"),
        ]

    def open(self, backend_class: type[Backend], target: Target) -> Backend:
        # The test driver keeps changes in memory: this backend also writes them into the lab's file.
        from gpupass.backends.kvm.lab.testdriver import LabKvmBackend

        return LabKvmBackend(target)

    def reset(self, data_dir: Path) -> None:
        path = self.path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        source = resources.files("gpupass.backends.kvm.lab").joinpath(FILE_NAME)
        with resources.as_file(source) as original:
            shutil.copyfile(original, path)

    def status(self, data_dir: Path) -> str:
        path = self.path(data_dir)
        return f"state in {path}" if path.exists() else "not created yet (first use creates it)"
