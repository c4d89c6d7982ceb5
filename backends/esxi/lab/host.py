"""`lab-esxi`: the vSphere simulator with the lab inventory, run in the background (127.0.0.1).

State under ``<data dir>/lab/esxi/``: ``password`` (generated, mode 600, never on a command line) and
``ca.pem`` (the simulator's CA, which the lab's target trusts and nothing else). The simulator keeps its
state in memory: it is kept while the lab is up and starts fresh at each `lab up` / `lab reset`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from gpupass.core.lab import process as labprocess
from gpupass.core.ports import LabHost
from gpupass.core.target import Secret, Target, TlsOptions

NAME = "lab-esxi"
USER = "administrator@vsphere.local"
READY = "GPUPASS-ESXI-LAB-READY "


class EsxiLab(labprocess.ServerLab, LabHost):
    name = NAME
    platform = "esxi"
    description = ("vSphere API simulator on 127.0.0.1: vCenter with esx01 (H100 held by cad-ws, T4) and esx02 "
                   "(2x A100 80GB); VMs ml-train, render01 (BIOS), web01 (running), cad-ws, snap01 (snapshot)")

    def up(self, data_dir: Path) -> str:
        from gpupass.backends.esxi.lab import simulator

        labprocess.require_modules(NAME, ("cryptography", "pyVmomi"),
                                   "the simulator's launcher makes its own CA; the lab speaks to it with pyvmomi")
        try:
            simulator.check_toolchain()
        except simulator.SimulatorError as exc:
            from gpupass.core.errors import BackendUnavailable

            raise BackendUnavailable(f"{NAME} cannot be built: {exc}",
                                     remedy="bash .ci/bootstrap installs both (golang-go, "
                                            "golang-github-vmware-govmomi-dev)") from exc
        self.password(data_dir)
        directory = self.directory(data_dir)
        argv = labprocess.python_argv("gpupass.backends.esxi.lab.server", "--ready", READY.strip(), "--user", USER,
                                      "--password-file", str(directory / "password"), "--dir", str(directory))
        running = labprocess.start(data_dir, NAME, argv, READY, timeout=900)
        return f"serving the vSphere API at {running.info.get('url')} (pid {running.pid})"

    def status(self, data_dir: Path) -> str:
        running = labprocess.running(data_dir, NAME)
        if running is None:
            return "down (`gpupass lab up lab-esxi` starts it)"
        return f"up at {running.info.get('url')} (pid {running.pid})"

    def target(self, data_dir: Path) -> Target:
        info = self.require_running(data_dir).info
        return Target(uri=f"esxi://{quote(USER, safe='')}@127.0.0.1:{info['port']}/{info['datacenter']}",
                      name=NAME, password=Secret(self.password(data_dir)), tls=TlsOptions(ca_file=info["ca"]))

    def demo_steps(self, labs: Sequence[str]) -> list[tuple[str, str]]:
        steps = [("The vSphere lab: GPUs of both ESXi hosts, and who holds them", "gpus lab-esxi")]
        if "lab-kvm" in labs:
            steps.append(("cad-ws holds an H100 SXM5 on ESXi: what would it need on KVM?",
                          "migrate plan lab-esxi cad-ws lab-kvm"))
        return steps

    def reset(self, data_dir: Path) -> None:
        was_up = self.is_up(data_dir)
        if was_up:
            labprocess.stop(data_dir, NAME)
            self.up(data_dir)
