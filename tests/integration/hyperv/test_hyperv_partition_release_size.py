"""A release of a VM's partitions of many GPUs: its first step's script carries the release's note naming every GPU
(scripts.RELEASE_BEGIN), about 120 characters each, and a script must fit cmd.exe's command line (scripts.MAX_SCRIPT_CHARS:
pywinrm sends `powershell -encodedcommand`, base64 of UTF-16). Past that the plan is refused before anything is sent,
with the remedy to release one GPU at a time (HypervBackend.plan_release_share) -- and that remedy works. Real pywinrm
against the lab endpoint."""
from __future__ import annotations

import pytest

from gpupass.backends.hyperv import scripts
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import HostModel, PnpDevice, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_80G_BARS, PartitionableGpu, lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name
from gpupass.core import plugins
from gpupass.core.domain.request import ReleaseRequest
from gpupass.core.errors import UsageError
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER


def partitions_of_gpus(count: int) -> HostModel:
    """The lab host with `count` more partitionable GPUs (lab assumptions: A100s in slots of their own), ml-train
    holding a partition of each."""
    model = lab_host()
    for i in range(count):
        device = PnpDevice(
            instance_id=f"PCI\\VEN_10DE&DEV_20B5&SUBSYS_153310DE&REV_A1\\4&5D0C{i:04X}&0&0010",
            friendly_name="NVIDIA A100 80GB PCIe", pnp_class="Display",
            location_path=f"PCIROOT({0xC0 + i:X})#PCI(0100)#PCI(0000)", vendor_id=0x10DE, device_id=0x20B5,
            bars=list(A100_80G_BARS), bars_below_4g=1)
        model.devices.append(device)
        model.partitionable.append(PartitionableGpu(device.instance_id, valid_partition_counts=[16],
                                                    partition_count=16))
        assert run_script(model, scripts.partition_add_script("ml-train", partitionable_gpu_name(device.instance_id))
                          ).exit_code == 0
    return model


@pytest.fixture
def six(endpoint_factory):
    model = partitions_of_gpus(6)
    ep = endpoint_factory(model, "basic")
    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv",
                                   password=Secret(PASSWORD)))
    return model, ep, backend


def test_the_first_steps_script_outgrows_the_command_line_at_six_gpus_and_not_before():
    """Where the bound lies (so the test below is the case it claims): five GPUs' note fits, six do not."""
    paths = [a.instance_path for a in partitions_of_gpus(6).vm("ml-train").gpu_partitions]
    scripts.partition_remove_script("ml-train", paths[0], 1, intent=tuple(paths[:5]))
    with pytest.raises(scripts.ScriptTooLarge):
        scripts.partition_remove_script("ml-train", paths[0], 1, intent=tuple(paths))


def test_a_release_of_six_gpus_partitions_is_refused_before_any_change_and_one_gpu_at_a_time_works(six):
    model, ep, backend = six
    before, sent = model.to_dict(), len(ep.scripts)
    facts = backend.inventory()
    held = [g for g in facts.gpus if g.sharing is not None and g.sharing.held_by("ml-train")]
    assert len(held) == 6
    with pytest.raises(UsageError) as caught:
        make_plan(backend, facts, ReleaseRequest("ml-train"), plugins.default_registry())
    assert "6 GPUs does not fit WinRM's command line" in caught.value.message
    assert "one GPU at a time" in (caught.value.remedy or "") and "gpupass release HOST VM GPU" in caught.value.remedy
    assert model.to_dict() == before and len(ep.scripts) == sent + 1   # the inventory read, nothing else
    # the remedy, as said: one GPU at a time (one step, no note), each a release that goes through
    for gpu in held:
        plan = make_plan(backend, backend.inventory(), ReleaseRequest("ml-train", (gpu.address,)),
                         plugins.default_registry())
        (step,) = [s for s in plan.steps if s.writes]
        assert scripts.RELEASE_BEGIN not in (step.preview or "")
        execute(backend, plan)
    assert model.vm("ml-train").gpu_partitions == [] and model.vm("ml-train").notes == ""
    assert all(not g.sharing.held_by("ml-train") for g in backend.inventory().gpus if g.sharing is not None)

