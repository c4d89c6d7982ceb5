"""A lost reply on each Hyper-V GPU partition (GPU-P) share write: the host ran the script -- Add-VMGpuPartitionAdapter,
or Remove-VMGpuPartitionAdapter -- and the connection closed before its output came back (the endpoint's
drop_next_receive). gpupass counts the VM's partitions of the GPU again: an add found applied is taken back (the VM
holds exactly the partitions it held before); a removal found applied is reported done, since the settings an undo
would need were in the lost reply; where the read-back is lost too, the outcome is said to be not known. The same
command run again converges."""
from __future__ import annotations

import pytest

from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, MI300X_LOC, RTX_GPUP_INSTANCE,
                                                   RTX_GPUP_LOC, T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, partitions_of_two_gpus

RTX = address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])[RTX_GPUP_LOC]
PATH = partitionable_gpu_name(RTX_GPUP_INSTANCE)


@pytest.fixture
def lab(endpoint_factory):
    model = partitioned_lab_host()
    ep = endpoint_factory(model, "basic")
    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv",
                                   password=Secret(PASSWORD)))
    return model, ep, backend


def planned(backend, request):
    plan = make_plan(backend, backend.inventory(), request, plugins.default_registry())
    assert not plan.blocked and plan.steps, plan.findings
    return plan


ASSIGN = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-32"))
RELEASE = ReleaseRequest("ml-train", (RTX,))


def partitions(model):
    return [(a.instance_path, a.adapter_id) for a in model.vm("ml-train").gpu_partitions]


def test_a_lost_reply_to_a_partition_add_is_read_back_and_taken_back_and_a_rerun_converges(lab):
    model, ep, backend = lab
    before = model.to_dict()
    plan = planned(backend, ASSIGN)
    ep.drop_next_receive()
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is True, caught.value.message
    assert model.to_dict() == before                       # the adapter the host added was taken back
    execute(backend, planned(backend, ASSIGN))             # the same assign again
    assert [p for p, _ in partitions(model)] == [PATH]


def test_a_lost_reply_to_a_partition_release_is_read_back_and_reported_done(lab):
    """The reply lost carried the removed adapter's settings, which an undo would need to add it back as it was: the
    release is read back as done and said so (not rolled back), and the same release again has nothing to do."""
    model, ep, backend = lab
    original = model.to_dict()
    execute(backend, planned(backend, ASSIGN))
    plan = planned(backend, RELEASE)
    ep.drop_next_receive()
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is False, caught.value.message
    assert "the release went through" in caught.value.message
    assert partitions(model) == [] and model.to_dict() == original
    rerun = make_plan(backend, backend.inventory(), RELEASE, plugins.default_registry())
    assert rerun.nothing_to_do


def test_a_lost_reply_and_a_lost_read_back_are_reported_as_not_known(lab):
    model, ep, backend = lab
    plan = planned(backend, ASSIGN)
    ep.drop_next_receive(2)                                # the add's reply, then the read-back's
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is False and "could not be read again" in caught.value.message
    assert [p for p, _ in partitions(model)] == [PATH]     # the host did add it: `status` shows it, and ...
    rerun = make_plan(backend, backend.inventory(), ASSIGN, plugins.default_registry())
    assert rerun.nothing_to_do                             # ... the same assign again has nothing to do


def test_a_client_killed_with_its_partition_add_on_the_wire_leaves_the_vm_after_and_a_rerun_converges(lab):
    """A real `gpupass assign --share` process killed (SIGKILL) with its Add-VMGpuPartitionAdapter script held on the
    wire (the endpoint's hold_next_command), which the host then runs: the VM holds the partition, `status` shows it,
    the same assign again has nothing to do, and a release gives it back."""
    import json
    import os
    import subprocess

    from support.cli import GPUPASS, killed_with_script_held

    model, ep, backend = lab
    original = model.to_dict()
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}
    uri = backend.target.uri

    def cli(*args):
        return subprocess.run([*GPUPASS, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    killed_with_script_held(ep, "Add-VMGpuPartitionAdapter",
                            ["assign", uri, "ml-train", str(RTX), "--share", "partitions-32", "--yes"], env)
    assert [p for p, _ in partitions(model)] == [PATH]
    status = json.loads(cli("status", uri, "--json").stdout)
    assert next(v for v in status["vms"] if v["name"] == "ml-train")["unfinished"] == []
    card = next(g for g in json.loads(cli("gpus", uri, "--json").stdout)["gpus"] if g["address"] == str(RTX))
    assert "ml-train" in {s["holder"] for s in card["sharing"]["shares"]}
    again = cli("assign", uri, "ml-train", str(RTX), "--share", "partitions-32", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stdout + again.stderr
    released = cli("release", uri, "ml-train", str(RTX), "--yes")
    assert released.returncode == 0, released.stdout + released.stderr
    assert model.to_dict() == original


def test_a_client_killed_with_its_partition_removal_on_the_wire_leaves_the_vm_released_and_a_rerun_converges(lab):
    """A real `gpupass release` of a GPU partition killed (SIGKILL) with its Remove-VMGpuPartitionAdapter script held
    on the wire, which the host then runs: the VM is exactly as before the assign, `gpus` shows no share of it,
    `status` has nothing unfinished, and the same release again has nothing to do."""
    import json
    import os
    import subprocess

    from support.cli import GPUPASS, killed_with_script_held

    model, ep, backend = lab
    original = model.to_dict()
    execute(backend, planned(backend, ASSIGN))
    assert [p for p, _ in partitions(model)] == [PATH]
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}
    uri = backend.target.uri

    def cli(*args):
        return subprocess.run([*GPUPASS, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    killed_with_script_held(ep, "Remove-VMGpuPartitionAdapter", ["release", uri, "ml-train", str(RTX), "--yes"], env)
    assert model.to_dict() == original
    status = json.loads(cli("status", uri, "--json").stdout)
    assert next(v for v in status["vms"] if v["name"] == "ml-train")["unfinished"] == []
    card = next(g for g in json.loads(cli("gpus", uri, "--json").stdout)["gpus"] if g["address"] == str(RTX))
    assert "ml-train" not in {s["holder"] for s in card["sharing"]["shares"]}
    again = cli("release", uri, "ml-train", str(RTX), "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stdout + again.stderr
    assert model.to_dict() == original



def test_a_client_killed_between_the_steps_of_a_release_of_two_gpus_partitions_is_shown_and_finished(endpoint_factory):
    """A release of partitions of two GPUs is two steps (one script each). A real `gpupass release` process killed
    (SIGKILL) between them -- the second script held at the endpoint and never run, as when the client dies before it
    sends it -- leaves the first GPU's partition removed and the second's held: the first script wrote the release's
    note into the VM's notes before its removal, so `status` shows the release unfinished with the command that finishes
    it, that command finishes it (the note taken out with the last removal), and the same release again has nothing to
    do."""
    import json
    import os
    import re
    import shlex
    import subprocess

    from gpupass.backends.hyperv.scripts import RELEASE_BEGIN, ps_quote
    from support.cli import GPUPASS, killed_with_script_held

    model = partitions_of_two_gpus()
    ep = endpoint_factory(model, "basic")
    uri = f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"
    env = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}
    _, second = [a.instance_path for a in model.vm("ml-train").gpu_partitions]
    notes = model.vm("ml-train").notes

    def cli(*args):
        return subprocess.run([*GPUPASS, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    killed_with_script_held(ep, f"$ip={ps_quote(second)}", ["release", uri, "ml-train", "--yes"], env, runs=False)
    assert partitions(model) and [p for p, _ in partitions(model)] == [second]   # stopped between its two steps
    assert RELEASE_BEGIN in model.vm("ml-train").notes
    status = json.loads(cli("status", uri, "--json").stdout)
    (note,) = next(v for v in status["vms"] if v["name"] == "ml-train")["unfinished"]
    assert "stopped between its steps" in note and "still holds partitions of" in note, note
    (command,) = re.findall(r"`(gpupass [^`]+)`", note)
    finish = cli(*shlex.split(command)[1:], "--yes")
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert partitions(model) == [] and model.vm("ml-train").notes == notes
    status = json.loads(cli("status", uri, "--json").stdout)
    assert next(v for v in status["vms"] if v["name"] == "ml-train")["unfinished"] == []
    again = cli("release", uri, "ml-train", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stdout + again.stderr


# -- the endpoint frozen before each partition write (tests/support/hyperv_faults.py) --------------------------------
@pytest.fixture
def frozen_lab(tmp_path):
    from support.hyperv_faults import endpoint_process

    with endpoint_process(tmp_path, partitioned_lab_host(), USER, PASSWORD) as endpoint:
        target = Target(uri=f"hyperv+http://{USER}@127.0.0.1:{endpoint.port}/?transport=basic", name="hv",
                        password=Secret(PASSWORD))
        yield endpoint, target


def held_by_ml_train(endpoint):
    return [a.instance_path for a in endpoint.model().vm("ml-train").gpu_partitions]


def test_an_endpoint_frozen_before_a_partition_add_is_reported_unknown_and_a_rerun_converges(frozen_lab):
    """Frozen (SIGSTOP) with the Add-VMGpuPartitionAdapter script about to go: gpupass gives up after the host's
    timeout, cannot read the host back either and says the outcome is not known (rolled_back false); the thawed endpoint
    runs the waiting script, the host read back shows the partition, and the same assign again has nothing to do."""
    from support.hyperv_faults import frozen_before_its_write

    endpoint, target = frozen_lab
    error = frozen_before_its_write(endpoint, target, ASSIGN, "Add-VMGpuPartitionAdapter",
                                    lambda: held_by_ml_train(endpoint) == [PATH])
    assert "could not be read again" in error.message
    assert held_by_ml_train(endpoint) == [PATH]
    with HypervBackend(target) as again:
        facts = again.inventory()
        gpu = next(g for g in facts.gpus if g.address == RTX)
        assert [s.holder for s in gpu.sharing.shares if s.holder == "ml-train"] == ["ml-train"]
        assert facts.find_vm("ml-train").unfinished == ()
        assert make_plan(again, facts, ASSIGN, plugins.default_registry()).nothing_to_do


def test_an_endpoint_frozen_before_a_partition_removal_is_reported_unknown_and_a_rerun_converges(frozen_lab):
    """Frozen with the Remove-VMGpuPartitionAdapter script about to go: reported not known (rolled_back false); the
    thawed endpoint removes the partition, the host read back shows none, and the same release again has nothing to
    do."""
    from support.hyperv_faults import frozen_before_its_write

    endpoint, target = frozen_lab
    original = endpoint.model().to_dict()
    with HypervBackend(target) as first:
        execute(first, planned(first, ASSIGN))
    assert held_by_ml_train(endpoint) == [PATH]
    frozen_before_its_write(endpoint, target, RELEASE, "Remove-VMGpuPartitionAdapter",
                            lambda: held_by_ml_train(endpoint) == [])
    assert endpoint.model().to_dict() == original
    with HypervBackend(target) as again:
        assert make_plan(again, again.inventory(), RELEASE, plugins.default_registry()).nothing_to_do


def test_a_release_failing_after_its_first_removal_is_read_back_and_reported_partial_and_a_rerun_converges(lab):
    """Remove-VMGpuPartitionAdapter fails on the host at the second of two partitions: the script says it had removed
    one (`changed`), so its failure is not taken for "nothing changed": the host is read again, the error says what the
    VM holds now, and the same release again finishes it."""
    model, ep, backend = lab
    original = model.to_dict()
    from gpupass.backends.hyperv import scripts
    from gpupass.backends.hyperv.lab.hostmodel import run_script

    execute(backend, planned(backend, ASSIGN))
    assert run_script(model, scripts.partition_add_script("ml-train", PATH)).exit_code == 0   # a second one
    assert len(partitions(model)) == 2
    plan = planned(backend, RELEASE)
    ep.inject_fault("Remove-VMGpuPartitionAdapter", 2)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is False, caught.value.message
    assert "holds 1 partition(s)" in caught.value.message, caught.value.message
    assert len(partitions(model)) == 1
    execute(backend, planned(backend, RELEASE))   # the same release again
    assert partitions(model) == [] and model.to_dict() == original
