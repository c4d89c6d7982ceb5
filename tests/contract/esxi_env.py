"""The contract environment for ESXi: the vSphere simulator with the lab inventory (imported by conftest)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest


def ensure_esxi_plugin() -> None:
    from gpupass.core import plugins

    assert any(b.platform == "esxi" for b in plugins.default_registry().backends), "esxi entry point missing"


def esxi_vcsim(tmp_path: Path, backend_env: type, hostile_names: tuple[str, ...], closed_port: Callable[[], int]):
    """backend_env: conftest's BackendEnv class (passed in: conftest modules are not importable by name)."""
    pytest.importorskip("pyVmomi", reason="pyvmomi is not installed (pip install 'gpupass[esxi]')")
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.backends.esxi.lab.simulator import DEFAULT_GOPATH, VCSim, _p40, lab_config
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.target import Secret, Target, TlsOptions

    gopath = os.environ.get("GPUPASS_GOPATH", DEFAULT_GOPATH)
    if not shutil.which("go") or not os.path.isdir(f"{gopath}/src/github.com/vmware/govmomi/simulator"):
        pytest.skip("the vSphere simulator needs golang-go and golang-github-vmware-govmomi-dev")
    ensure_esxi_plugin()
    # One host (the contract finds GPUs by address alone; a vCenter repeats addresses across hosts): the lab's
    # esx02 with both A100s active, cad-ws holding 0000:3b:00.0, web01 running, ml-train off.
    config = lab_config()
    config["hosts"] = [h for h in config["hosts"] if h["name"] == "esx02.lab.local"]
    for gpu in config["hosts"][0]["gpus"]:
        gpu["passthru_enabled"] = gpu["passthru_active"] = True
    # and a Tesla P40 in shared direct mode (lab-esxi's esx03 card) for the share tests: vGPU profiles
    config["hosts"][0]["gpus"].append(_p40("0000:d8:00.0"))
    config["hosts"][0]["graphics"] = {"default_type": "sharedDirect", "assignment_policy": "performance"}
    config["vms"] = [vm for vm in config["vms"] if vm["host"] != "esx03.lab.local"]  # the vGPU host's VMs stay out
    for vm in config["vms"]:
        vm["host"] = "esx02.lab.local"
    # vSphere keeps any name but escapes "/", "\\" and "%" in what it returns (HOSTILE_NAMES has none of them).
    config["vms"] += [{"name": name, "host": "esx02.lab.local", "power_state": "poweredOff", "firmware": "efi",
                       "guest_id": "ubuntu64Guest", "num_cpus": 2, "memory_mb": 4 * 1024} for name in hostile_names]
    sim = VCSim(config, username="administrator@vsphere.local").start()
    target = Target(uri=f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab", name="contract-esxi",
                    password=Secret(sim.password), tls=TlsOptions(ca_file=str(sim.ca_file)))

    def remove_vm(name: str) -> None:
        """Destroy_Task on the VM, by another client of the same vCenter."""
        from pyVim.connect import Disconnect
        from pyVim.task import WaitForTask
        from pyVmomi import vim

        si = sim.connect()
        try:
            view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
            vm = next(vm for vm in view.view if vm.name == name)
            view.Destroy()
            WaitForTask(vm.Destroy_Task())
        finally:
            Disconnect(si)

    unreachable = Target(uri=f"esxi://administrator%40vsphere.local@127.0.0.1:{closed_port()}/Lab", name="nowhere",
                         password=Secret("x"), tls=TlsOptions(ca_file=str(sim.ca_file)))
    return backend_env(
        platform="esxi",
        open=lambda: EsxiBackend(target),
        free_gpu=PciAddress.parse("0000:af:00.0"),
        off_vm="ml-train",
        running_vm="web01",
        owned_gpu=PciAddress.parse("0000:3b:00.0"),
        owner_vm="cad-ws",
        cleanup=[sim.stop],
        unreachable=lambda: EsxiBackend(unreachable),
        remove_vm=remove_vm,
        hostile_vms=hostile_names,
        shared_gpu=PciAddress.parse("0000:d8:00.0"),
        share_type="P40-4C",
    )
