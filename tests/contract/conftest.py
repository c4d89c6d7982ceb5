"""The environments the backend contract runs against: one factory per platform, registered in ENVIRONMENTS.

A factory gets pytest's tmp_path and returns a BackendEnv: the lab host (test-driver file, vSphere simulator,
Hyper-V host model behind our WS-Management endpoint) with a free isolated GPU, a powered-off VM, a running VM,
a GPU owned by another powered-off VM, a VM for each of HOSTILE_NAMES, a way to remove a VM behind the
backend's back and a backend on a closed port. Every test in this folder runs against each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from gpupass.core.domain.pci import PciAddress
from gpupass.core.testing import HOSTILE_NAMES, BackendEnv, closed_port


def kvm_test_driver(tmp_path: Path) -> BackendEnv:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")
    from gpupass.backends.kvm.backend import KvmBackend
    from gpupass.backends.kvm.lab import testhost
    from gpupass.backends.kvm.lab.testdriver import LabKvmBackend, file_of, remove_domain
    from gpupass.core.target import Target

    functions = [
        testhost.gpu("0000:41:00.0", 0x1EB8, "TU104GL [Tesla T4]", group=5),
        testhost.gpu("0000:01:00.0", 0x2684, "AD102 [GeForce RTX 4090]", group=14, class_code=0x030000),
        testhost.audio("0000:01:00.1", 0x22BA, group=14),
        testhost.other("0000:03:00.0", group=16),
        # A Tesla P40 with NVIDIA's vGPU manager (lab-kvm's card): mediated devices of GRID P40-1Q, none held.
        testhost.gpu("0000:81:00.0", 0x1B38, "GP102GL [Tesla P40]", group=30),
    ]
    domains = [
        testhost.domain("off-vm"),
        testhost.domain("running-vm", running=True),
        testhost.domain("owner-vm", hostdevs=("0000:01:00.0", "0000:01:00.1")),
        # libvirt refuses only "/" and newlines in domain names (none of HOSTILE_NAMES has either).
        *(testhost.domain(name) for name in HOSTILE_NAMES),
    ]
    # persist_test_state writes each redefinition back to the file, so every open sees earlier changes
    # (a plain test:/// open starts from the file each time).
    uri = testhost.write_host(tmp_path / "contract-kvm.xml", functions, domains)
    _add_mdevs(file_of(uri), "0000:81:00.0", count=len(HOSTILE_NAMES) + 2)
    return BackendEnv(
        platform="kvm",
        open=lambda: LabKvmBackend(Target(uri=uri, name="contract-kvm", options={"persist_test_state": True})),
        free_gpu=PciAddress.parse("0000:41:00.0"),
        off_vm="off-vm",
        running_vm="running-vm",
        owned_gpu=PciAddress.parse("0000:01:00.0"),
        owner_vm="owner-vm",
        # libvirt's remote driver, on a port where no libvirtd listens.
        unreachable=lambda: KvmBackend(Target(uri=f"qemu+tcp://127.0.0.1:{closed_port()}/system", name="nowhere")),
        remove_vm=lambda name: remove_domain(file_of(uri), name),
        hostile_vms=HOSTILE_NAMES,
        shared_gpu=PciAddress.parse("0000:81:00.0"),
        share_type="GRID P40-1Q",
    )


def _add_mdevs(path: Path, parent: str, count: int) -> None:
    """Give the card at `parent` the mdev type nvidia-46 "GRID P40-1Q" (libvirt docs/formatnode.rst, mdev_types
    capability; the type of tests/fixtures/real/sharing/nodedev-mdev-grid-p40-1q-kubevirt.xml) and `count` mediated
    devices of it (capability mdev with the type and a UUID): the test driver cannot create one
    (virNodeDeviceDefineXML is not supported there), so an admin's devices are written into the host file."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(path)
    node = tree.getroot()
    name = "pci_" + parent.replace(":", "_").replace(".", "_")
    card = next(d for d in node.findall("device") if d.findtext("name") == name)
    pci = card.find("capability[@type='pci']")
    types = ET.SubElement(pci, "capability", {"type": "mdev_types"})
    kind = ET.SubElement(types, "type", {"id": "nvidia-46"})
    ET.SubElement(kind, "name").text = "GRID P40-1Q"
    ET.SubElement(kind, "deviceAPI").text = "vfio-pci"
    ET.SubElement(kind, "availableInstances").text = str(24 - count)
    at = max(i for i, child in enumerate(node) if child.tag == "device") + 1
    for index in range(count):
        uuid = f"c0a7f1e2-0000-4000-8000-{index + 1:012x}"
        device = ET.Element("device")
        ET.SubElement(device, "name").text = f"mdev_{uuid.replace('-', '_')}_{name[4:]}"
        ET.SubElement(device, "parent").text = name
        ET.SubElement(ET.SubElement(device, "driver"), "name").text = "nvidia-vgpu-vfio"
        capability = ET.SubElement(device, "capability", {"type": "mdev"})
        ET.SubElement(capability, "type", {"id": "nvidia-46"})
        ET.SubElement(capability, "uuid").text = uuid
        node.insert(at + index, device)
    tree.write(path, encoding="unicode")


def ensure_hyperv_plugin() -> None:
    """The Hyper-V plugin comes through its entry point, like any third-party backend's."""
    from gpupass.core import plugins

    assert any(b.platform == "hyperv" for b in plugins.default_registry().backends), "hyperv entry point missing"


def hyperv_wsman(tmp_path: Path) -> BackendEnv:
    pytest.importorskip("winrm", reason="pywinrm is not installed (pip install 'gpupass[hyperv]')")
    pytest.importorskip("tree_sitter_powershell", reason="the Hyper-V host model needs tree-sitter-powershell")
    from gpupass.backends.hyperv.backend import HypervBackend
    from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, RTX_GPUP_LOC,
                                                           partitioned_lab_host)
    from gpupass.backends.hyperv.addressing import address_map
    from gpupass.backends.hyperv.lab.wsman import serve
    from gpupass.core.target import Secret, Target

    ensure_hyperv_plugin()
    from gpupass.backends.hyperv.lab.hostmodel.lab import G, VirtualMachine

    # The lab model: A100 #2 free, A100 #1 held by cad-ws, ml-train off, web01 running. NTLM over HTTP.
    # and a partitionable GPU (GPU-P, 32 partitions, web01 holding one) for the share tests
    model = partitioned_lab_host()
    # Hyper-V's own name rules are not in its cmdlet reference (New-VM -Name is a plain string); the host model
    # takes any name, so every hostile name is here, quoted by the backend and parsed by tree-sitter.
    model.vms += [VirtualMachine(name, generation=2, state="Off", memory_startup=8 * G) for name in HOSTILE_NAMES]

    def remove_vm(name: str) -> None:  # as Remove-VM by another admin (the model is the host)
        model.vms[:] = [vm for vm in model.vms if vm.name != name]

    endpoint = serve(model, auth="ntlm", users={"Administrator": "Contract-Passw0rd!"})
    uri = f"hyperv+http://Administrator@127.0.0.1:{endpoint.port}/"
    options = {"state_file": str(tmp_path / "previous-settings.json")}
    addresses = address_map([A100_1_LOC, A100_2_LOC, RTX_GPUP_LOC])
    return BackendEnv(
        platform="hyperv",
        open=lambda: HypervBackend(Target(uri=uri, name="contract-hyperv", password=Secret("Contract-Passw0rd!"),
                                          options=options)),
        free_gpu=addresses[A100_2_LOC],
        off_vm="ml-train",
        running_vm="web01",
        owned_gpu=addresses[A100_1_LOC],
        owner_vm="cad-ws",
        cleanup=[endpoint.stop],
        unreachable=lambda: HypervBackend(Target(uri=f"hyperv+http://Administrator@127.0.0.1:{closed_port()}/",
                                                 name="nowhere", password=Secret("x"), options=options)),
        remove_vm=remove_vm,
        hostile_vms=HOSTILE_NAMES,
        shared_gpu=addresses[RTX_GPUP_LOC],
        share_type="partitions-32",
    )


def esxi_vcsim(tmp_path: Path) -> BackendEnv:
    """The vSphere simulator (tests/contract/esxi_env.py, loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpupass_contract_esxi_env", Path(__file__).with_name("esxi_env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.esxi_vcsim(tmp_path, BackendEnv, HOSTILE_NAMES, closed_port)


ENVIRONMENTS: dict[str, Callable[[Path], BackendEnv]] = {
    "kvm-test-driver": kvm_test_driver,
    "hyperv-wsman": hyperv_wsman,
    "esxi-vcsim": esxi_vcsim,
}


@pytest.fixture(params=sorted(ENVIRONMENTS))
def backend_env(request, tmp_path) -> Iterator[BackendEnv]:
    env = ENVIRONMENTS[request.param](tmp_path)
    try:
        yield env
    finally:
        for step in reversed(env.cleanup):
            step()
