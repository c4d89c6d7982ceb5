"""The fault matrix's Hyper-V undo rows and the release taking back a stopped count change (docs/faults.md): a real
gpupass process killed (SIGKILL) with the undo script held at the endpoint, which the host then runs; the undo's reply
lost after the host ran it; and the count change's take-back killed, frozen and its reply lost. After each: the host is
exactly as before the command (an undo) or after it (the take-back), `status` has nothing to say, and the same command
again converges. The first fault of a run, which makes gpupass undo, is a reply lost on the host's side of the first
write (the endpoint's drop_reply_of_next: the host ran it, gpupass read it back done and undoes it) or a cmdlet failing
there (HostModel.inject_fault)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_LOC,
                                                   T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, partitions_of_two_gpus, rtx_host
from support.cli import GPUPASS, killed_with_script_held

ADDRESSES = address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])
RTX = ADDRESSES[RTX_GPUP_LOC]
# what tells each script from the others (the assign script's own rollback names Remove-VMAssignableDevice too)
ASSIGN_SCRIPT = "Add-VMAssignableDevice -LocationPath $p -VM $v"
RELEASE_SCRIPT = "$step='Remove-VMAssignableDevice '+$p"
COUNT_SET_BACK = "$hv=@();$b=$false"
PARTITION_ADD = "Add-VMGpuPartitionAdapter -VM $v"
PARTITION_REMOVE = "Remove-VMGpuPartitionAdapter -VMGpuPartitionAdapter"


def share_lab():
    """The lab's GPU-P GPU with no partition held, 32 partitions now, 16 and 32 valid."""
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = [16, 32]
    return model


def count_changed():
    """An assign of a partition stopped after its count change: 16 partitions, none held, the intent in the notes."""
    model = share_lab()
    name = partitionable_gpu_name(model.partitionable[0].instance_id)
    assert run_script(model, S.partition_count_script(name, 16, 32, "ml-train")).exit_code == 0
    return model


def exactly(model) -> str:
    """The host, a VM's partitions compared by GPU only (an adapter added back has a new Id)."""
    data = model.to_dict()
    for vm in data["vms"]:
        vm["gpu_partitions"] = sorted(p["instance_path"] for p in vm.get("gpu_partitions") or [])
    return json.dumps(data, sort_keys=True)


class Lab:
    """The lab endpoint (in this process) serving `model`, a backend on it and `gpupass` run as a process."""

    def __init__(self, endpoint_factory, model) -> None:
        self.model = model
        self.ep = endpoint_factory(model, "basic")
        self.uri = f"hyperv+http://{USER}@127.0.0.1:{self.ep.port}/?transport=basic"
        self.env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}

    def backend(self) -> HypervBackend:
        return HypervBackend(Target(uri=self.uri, name="hv", password=Secret(PASSWORD)))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*GPUPASS, *args], env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)

    def unfinished(self) -> list[str]:
        status = json.loads(self.cli("status", self.uri, "--json").stdout)
        return next(v for v in status["vms"] if v["name"] == "ml-train")["unfinished"]

    def killed_with_undo_held(self, undo: str, args: list[str]) -> None:
        killed_with_script_held(self.ep, undo, [args[0], self.uri, *args[1:], "--yes"], self.env)

    def run(self, request) -> None:
        with self.backend() as backend:
            execute(backend, make_plan(backend, backend.inventory(), request, plugins.default_registry()))

    def converges(self, request) -> None:
        """The same command again does it, and once more has nothing to do."""
        self.ep.clear_faults()
        self.run(request)
        with self.backend() as backend:
            assert make_plan(backend, backend.inventory(), request, plugins.default_registry()).steps == ()


# -- the client killed with the undo on the wire ----------------------------------------------------------------------
def test_a_client_killed_with_the_undo_of_an_assign_on_the_wire_leaves_the_host_as_it_was(endpoint_factory):
    """The assign's reply lost: gpupass reads it back done and sends the release script to undo it; killed with that
    script held, which the host then runs: exactly as before the assign."""
    lab = Lab(endpoint_factory, rtx_host())
    before = exactly(lab.model)
    rtx = next(d for d in lab.model.devices if d.device_id == 0x2684)
    address = address_map([d.location_path for d in lab.model.devices])[rtx.location_path]
    lab.ep.drop_reply_of_next(ASSIGN_SCRIPT)
    lab.killed_with_undo_held(RELEASE_SCRIPT, ["assign", "ml-train", str(address)])
    assert exactly(lab.model) == before and lab.unfinished() == []
    lab.converges(AssignmentRequest("ml-train", (address,)))


def test_a_client_killed_with_the_count_set_back_on_the_wire_leaves_the_host_as_it_was(endpoint_factory):
    """The partition's add fails on the host after the count change: gpupass sets the count back; killed with that
    script held, which the host then runs: 32 partitions again, the note out of the notes, exactly as before."""
    lab = Lab(endpoint_factory, share_lab())
    before = exactly(lab.model)
    lab.ep.inject_fault("Add-VMGpuPartitionAdapter")
    lab.killed_with_undo_held(COUNT_SET_BACK, ["assign", "ml-train", str(RTX), "--share", "partitions-16"])
    assert exactly(lab.model) == before and lab.unfinished() == []
    lab.converges(AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-16")))


def test_a_client_killed_with_the_undo_of_a_partition_add_on_the_wire_leaves_the_host_as_it_was(endpoint_factory):
    """The add's reply lost: read back, the partition is there, so gpupass removes it; killed with that removal held,
    which the host then runs: exactly as before."""
    lab = Lab(endpoint_factory, share_lab())
    before = exactly(lab.model)
    lab.ep.drop_reply_of_next(PARTITION_ADD)
    lab.killed_with_undo_held(PARTITION_REMOVE, ["assign", "ml-train", str(RTX), "--share", "partitions-32"])
    assert exactly(lab.model) == before and lab.unfinished() == []
    lab.converges(AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-32")))


def test_a_client_killed_with_the_undo_of_a_partition_removal_on_the_wire_leaves_the_host_as_it_was(endpoint_factory):
    """A release of partitions of two GPUs whose second removal fails on the host: gpupass adds the first back (and
    settles the release's note); killed with that add held, which the host then runs: both partitions held, no note."""
    lab = Lab(endpoint_factory, partitions_of_two_gpus())
    before = exactly(lab.model)
    lab.ep.inject_fault("Remove-VMGpuPartitionAdapter", 2)
    lab.killed_with_undo_held(PARTITION_ADD, ["release", "ml-train"])
    assert exactly(lab.model) == before and lab.unfinished() == []
    lab.converges(ReleaseRequest("ml-train"))


def test_a_client_killed_with_the_take_back_of_a_stopped_count_change_on_the_wire_leaves_it_taken_back(
        endpoint_factory):
    """A release of a VM whose stopped assign left a count change (FinishCountChange): killed with its script held,
    which the host then runs: the count back to 32, the note out, `status` says nothing, a release again does nothing."""
    lab = Lab(endpoint_factory, count_changed())
    lab.killed_with_undo_held(COUNT_SET_BACK, ["release", "ml-train"])
    assert lab.model.partitionable[0].partition_count == 32 and S.COUNT_BEGIN not in lab.model.vm("ml-train").notes
    assert lab.unfinished() == []
    again = lab.cli("release", lab.uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stdout + again.stderr


# -- the undo's reply lost after the host ran it -----------------------------------------------------------------------
def test_a_lost_reply_on_the_undo_of_a_partition_add_is_read_back_as_undone(endpoint_factory):
    """The add's reply lost (read back done), then the removal undoing it loses its reply too: counted again, the VM
    holds what it held before, so the run reports itself rolled back, exactly as it was -- not an undo to make by
    hand."""
    lab = Lab(endpoint_factory, share_lab())
    before = exactly(lab.model)
    request = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-32"))
    with lab.backend() as backend:
        plan = make_plan(backend, backend.inventory(), request, plugins.default_registry())
        lab.ep.drop_reply_of_next(PARTITION_ADD)
        sent = backend._run_ps

        def then_lose_the_undos(script: str, action: str):
            if PARTITION_REMOVE in script:
                lab.ep.drop_reply_of_next(PARTITION_REMOVE)
            return sent(script, action)
        backend._run_ps = then_lose_the_undos
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert caught.value.rolled_back is True, caught.value.message
    assert exactly(lab.model) == before and lab.unfinished() == []
    lab.converges(request)


def test_a_lost_reply_on_the_undo_of_a_partition_removal_is_read_back_as_undone(endpoint_factory):
    """A release of two GPUs' partitions whose second removal fails on the host; the add putting the first back loses
    its reply: counted again, the partition is back and the note settled, so the run reports itself rolled back."""
    lab = Lab(endpoint_factory, partitions_of_two_gpus())
    before = exactly(lab.model)
    with lab.backend() as backend:
        plan = make_plan(backend, backend.inventory(), ReleaseRequest("ml-train"), plugins.default_registry())
        lab.ep.inject_fault("Remove-VMGpuPartitionAdapter", 2)
        lab.ep.drop_reply_of_next(PARTITION_ADD)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert caught.value.rolled_back is True, caught.value.message
    assert exactly(lab.model) == before and lab.unfinished() == []
    lab.converges(ReleaseRequest("ml-train"))


def test_a_lost_reply_on_the_take_back_of_a_stopped_count_change_is_read_back_done_and_a_rerun_converges(
        endpoint_factory):
    """The release's FinishCountChange runs on the host and its reply is lost: gpupass reads the host again and finds
    it done (the note out of the VM's notes, the count back), which is its outcome (it has no undo); `status` says
    nothing, and a release again has nothing to do."""
    lab = Lab(endpoint_factory, count_changed())
    with lab.backend() as backend:
        plan = make_plan(backend, backend.inventory(), ReleaseRequest("ml-train"), plugins.default_registry())
        lab.ep.drop_reply_of_next(COUNT_SET_BACK)
        execute(backend, plan)
    assert lab.model.partitionable[0].partition_count == 32 and S.COUNT_BEGIN not in lab.model.vm("ml-train").notes
    assert lab.unfinished() == []
    lab.converges(ReleaseRequest("ml-train"))
