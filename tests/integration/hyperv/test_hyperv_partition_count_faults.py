"""Faults on the Hyper-V host step that changes a GPU's partition count (Set-VMHostPartitionableGpu -PartitionCount,
scripts.partition_count_script), planned before Add-VMGpuPartitionAdapter when a share asks for another count
(issue 10's fault matrix): its reply lost, its undo's reply lost, its client killed with it on the wire."""
from __future__ import annotations

import json
import os

import pytest

from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_LOC,
                                                   T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, AssignOptions
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER
from support.cli import killed_with_script_held

RTX = address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])[RTX_GPUP_LOC]
ASSIGN = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-16"))
COUNT = "Set-VMHostPartitionableGpu"        # only the count script holds it
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


@pytest.fixture
def lab(endpoint_factory):
    """The lab's GPU-P GPU with no partition held, 32 partitions now, 8, 16 and 32 valid."""
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = [8, 16, 32]
    original = model.to_dict()
    ep = endpoint_factory(model, "basic")
    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv",
                                   password=Secret(PASSWORD)))
    return model, ep, backend, original


def planned(backend):
    plan = make_plan(backend, backend.inventory(), ASSIGN, plugins.default_registry())
    assert [s.action for s in plan.steps] == ["hyperv.set-partition-count", "hyperv.add-gpu-partition"]
    return plan


def losing_the_reply_of_count_script(backend, ep, nth):
    """Drop the reply of the `nth` count script gpupass sends, after the host ran it."""
    sent, seen = backend._run_ps, []

    def send(script, action):
        if COUNT in script:
            seen.append(action)
            if len(seen) == nth:
                ep.drop_next_receive()
        return sent(script, action)

    backend._run_ps = send
    return seen


def converges(model, backend):
    """The same assign again (the count step only where the count is not 16 yet): 16 partitions, one of them
    ml-train's; once more, nothing to do."""
    execute(backend, make_plan(backend, backend.inventory(), ASSIGN, plugins.default_registry()))
    assert model.partitionable[0].partition_count == 16 and len(model.vm("ml-train").gpu_partitions) == 1
    assert make_plan(backend, backend.inventory(), ASSIGN, plugins.default_registry()).nothing_to_do


def test_a_lost_reply_on_the_count_change_is_read_back_and_set_back(lab):
    model, ep, backend, original = lab
    plan = planned(backend)
    seen = losing_the_reply_of_count_script(backend, ep, 1)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    del backend._run_ps
    assert len(seen) == 2                                    # the change, then its undo
    assert caught.value.rolled_back is True and "had gone through and was undone" in caught.value.message
    assert model.to_dict() == original
    converges(model, backend)


def test_a_lost_reply_on_the_count_set_back_is_read_back_not_left_to_be_done_by_hand(lab):
    """The add fails on the host, so gpupass sets the count back; that reply is lost. The count read again is the old
    one: reported rolled back, exactly as it was (was "could not be undone: undo by hand" before)."""
    model, ep, backend, original = lab
    plan = planned(backend)
    seen = losing_the_reply_of_count_script(backend, ep, 2)
    ep.inject_fault("Add-VMGpuPartitionAdapter")
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    finally:
        ep.clear_faults()
        del backend._run_ps
    assert len(seen) == 2
    assert caught.value.rolled_back is True and "undo by hand" not in caught.value.message, caught.value.message
    assert model.to_dict() == original
    converges(model, backend)


def test_a_client_killed_with_the_count_change_on_the_wire_leaves_the_new_count_and_a_rerun_converges(lab):
    """A real `gpupass assign --share partitions-16` process killed (SIGKILL) with its count script held at the
    endpoint, which the host then runs: the GPU has 16 partitions and ml-train none. gpupass keeps no record of a count
    change, so `status` shows the GPU as it is (16 partitions, all free), not as an unfinished run; the same assign
    again finishes it."""
    model, ep, backend, _ = lab
    killed_with_script_held(ep, COUNT, ["assign", backend.target.uri, "ml-train", str(RTX), "--share",
                                        "partitions-16", "--yes"], ENV)
    assert model.partitionable[0].partition_count == 16 and model.vm("ml-train").gpu_partitions == []
    from support.cli import gpupass

    status = json.loads(gpupass("status", backend.target.uri, "--json", env=ENV).stdout)
    assert all(v["unfinished"] == [] for v in status["vms"])
    gpu = next(g for g in status["gpus"] if g["address"] == str(RTX))
    assert gpu["extra"]["gpu_partitioning"]["partition_count"] == 16
    converges(model, backend)
