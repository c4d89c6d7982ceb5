"""Helpers shared by the Hyper-V infrastructure tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import json
import os

import tree_sitter as ts
import tree_sitter_powershell as tsp
import winrm

from gpupass.backends.hyperv.lab.hostmodel import HostModel, PnpDevice, lab_host

USER, PASSWORD = "Administrator", "Lab-Passw0rd!"
M, G = 1024 ** 2, 1024 ** 3

PS_LANG = ts.Language(tsp.language())


def ps_parse(script: str) -> ts.Tree:
    return ts.Parser(PS_LANG).parse(script.encode("utf-8"))


def bad_nodes(script: str) -> list[str]:
    out = []

    def walk(n: ts.Node) -> None:
        if n.type == "ERROR" or n.is_missing:
            out.append(f"{n.type}@{n.start_point}")
        for c in n.children:
            walk(c)
    walk(ps_parse(script).root_node)
    return out


def rtx_host() -> HostModel:
    """A workstation host: RTX 4090 with its HDMI audio function, plus a second GPU (A100)."""
    m = lab_host()
    m.devices = [d for d in m.devices if d.device_id != 0x1EB8]   # drop the T4
    slot = "PCIROOT(0)#PCI(0100)#PCI(0000)"
    m.devices.append(PnpDevice(
        instance_id="PCI\\VEN_10DE&DEV_2684&SUBSYS_16F310DE&REV_A1\\4&9D3E2A1&0&0008",
        friendly_name="NVIDIA GeForce RTX 4090", pnp_class="Display", location_path=slot,
        vendor_id=0x10DE, device_id=0x2684, bars=[16 * M, 32 * G, 32 * M]))
    m.devices.append(PnpDevice(
        instance_id="PCI\\VEN_10DE&DEV_22BA&SUBSYS_16F310DE&REV_A1\\4&9D3E2A1&0&0108",
        friendly_name="NVIDIA High Definition Audio", pnp_class="Media",
        location_path=slot[:-3] + "01)", vendor_id=0x10DE, device_id=0x22BA, bars=[16 * 1024]))
    return m



def partitions_of_two_gpus() -> HostModel:
    """The lab's GPU-P host with ml-train holding a partition of two GPUs (the lab's second A100 made partitionable
    here), so that a release of both is two steps (plan_release_share: one per GPU)."""
    from gpupass.backends.hyperv import scripts
    from gpupass.backends.hyperv.lab.hostmodel import run_script
    from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC, PartitionableGpu, partitioned_lab_host
    from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name

    model = partitioned_lab_host()
    model.vm("ml-train").gpu_partitions.clear()
    for holder in model.vms:
        holder.gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = [16, 32]
    a100 = model.device_by_location(A100_2_LOC)
    model.partitionable.append(PartitionableGpu(a100.instance_id, valid_partition_counts=[16, 32], partition_count=32))
    for gpu in model.partitionable:
        script = scripts.partition_add_script("ml-train", partitionable_gpu_name(gpu.instance_id))
        assert run_script(model, script).exit_code == 0
    return model


class Remote:
    """A pywinrm session against an endpoint serving ``model``."""

    def __init__(self, endpoint, auth: str, user: str = USER, password: str = PASSWORD):
        self.endpoint = endpoint
        self.model = endpoint.model
        self.session = winrm.Session(endpoint.url, auth=(user, password), transport=auth,
                                     ca_trust_path=os.environ.get("REQUESTS_CA_BUNDLE") or "legacy_requests",
                                     proxy=None)

    def ps(self, script: str) -> winrm.Response:
        return self.session.run_ps(script)

    def ps_json(self, script: str) -> tuple[int, dict]:
        r = self.ps(script)
        assert r.std_out.strip(), f"no output; stderr: {r.std_err.decode(errors='replace')}"
        return r.status_code, json.loads(r.std_out)


def stop_a_release_half_way(backend, endpoint, vm: str, failing: str = "Mount-VMHostAssignableDevice",
                            nth: int = 1) -> None:
    """Leave `vm`'s release stopped half-way on the host, as a client killed with its release script on the wire
    leaves it when the host then fails the script at the `nth` call of `failing` (after Remove-VMAssignableDevice; the
    release's first Set-VM writes its intent, its second restores the settings): the release script
    gpupass plans is run on the host as sent, and nobody gives the devices back (no gpupass is left to)."""
    from gpupass.core import plugins
    from gpupass.core.domain.request import ReleaseRequest
    from gpupass.core.service import make_plan

    from gpupass.backends.hyperv.steps import Release

    plan = make_plan(backend, backend.inventory(), ReleaseRequest(vm), plugins.default_registry())
    (step,) = [s for s in plan.steps if isinstance(s.payload, Release)]
    endpoint.inject_fault(failing, nth)
    try:
        code, data, _ = backend._run_json(step.preview, "the release a killed client sent")
    finally:
        endpoint.clear_faults()
    assert code == 1 and data["step"].startswith(failing), data
