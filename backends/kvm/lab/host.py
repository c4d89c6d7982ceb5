"""`lab-kvm`: a libvirt test-driver host that ships with gpupass and keeps its state between commands."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from gpupass.core.ports import LabHost
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

    def reset(self, data_dir: Path) -> None:
        path = self.path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        source = resources.files("gpupass.backends.kvm").joinpath(FILE_NAME)
        with resources.as_file(source) as original:
            shutil.copyfile(original, path)

    def status(self, data_dir: Path) -> str:
        path = self.path(data_dir)
        return f"state in {path}" if path.exists() else "not created yet (first use creates it)"
