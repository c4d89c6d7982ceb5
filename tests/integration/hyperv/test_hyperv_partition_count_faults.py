"""Faults on the Hyper-V host step that changes a GPU's partition count (Set-VMHostPartitionableGpu -PartitionCount,
scripts.partition_count_script), planned before Add-VMGpuPartitionAdapter when a share asks for another count
(issue 10's fault matrix): its reply lost, its undo's reply lost, its client killed with it on the wire."""
from __future__ import annotations

import json
import os
import shlex

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_LOC,
                                                   T4_LOC, T4_NO_DRIVER_LOC, partitionable_gpu_name,
                                                   partitioned_lab_host)
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
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


def unfinished(uri, vm="ml-train"):
    from support.cli import gpupass

    status = json.loads(gpupass("status", uri, "--json", env=ENV).stdout)
    return next(v for v in status["vms"] if v["name"] == vm)["unfinished"]


def reverted_by_a_release(model, backend, original):
    """`gpupass release HOST ml-train` (a real process): the count back to 32, the note out: exactly as it was."""
    from support.cli import gpupass

    done = json.loads(gpupass("release", backend.target.uri, "ml-train", "--yes", "--json", env=ENV).stdout)
    assert done["changed"] is True, done
    assert model.to_dict() == original
    assert unfinished(backend.target.uri) == []
    assert make_plan(backend, backend.inventory(), ReleaseRequest("ml-train"), plugins.default_registry()).steps == ()


@pytest.mark.parametrize("rerun", ["assign", "release"])
def test_a_client_killed_with_the_count_change_on_the_wire_is_shown_by_status_and_a_rerun_finishes_or_reverts_it(
        lab, rerun):
    """A real `gpupass assign --share partitions-16` process killed (SIGKILL) with its count script held at the
    endpoint, which the host then runs: the GPU has 16 partitions and ml-train none. The script wrote the change's
    intent into ml-train's notes before Set-VMHostPartitionableGpu, so `status` names the stopped assign with the count
    before and after and the two ways out (was: the GPU shown as it is, nothing recorded who changed the count); the
    same assign again finishes it (the add takes the note out), a release sets the count back exactly."""
    model, ep, backend, original = lab
    uri = backend.target.uri
    killed_with_script_held(ep, COUNT, ["assign", uri, "ml-train", str(RTX), "--share", "partitions-16", "--yes"], ENV)
    assert model.partitionable[0].partition_count == 16 and model.vm("ml-train").gpu_partitions == []
    assert S.COUNT_BEGIN in model.vm("ml-train").notes
    (left,) = unfinished(uri)
    assert "from 32 to 16" in left and f"`gpupass assign {shlex.quote(uri)} ml-train {RTX} --share partitions-16` finishes it" in left
    assert f"`gpupass release {shlex.quote(uri)} ml-train` sets the count back to 32" in left
    assert f"Set-VMHostPartitionableGpu -Name {S.ps_quote(partitionable_gpu_name(model.partitionable[0].instance_id))} -PartitionCount 32" in left
    if rerun == "release":
        reverted_by_a_release(model, backend, original)
    else:
        converges(model, backend)
        assert model.vm("ml-train").notes == "" and unfinished(uri) == []
