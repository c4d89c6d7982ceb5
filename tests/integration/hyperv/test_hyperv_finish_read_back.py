"""The two finishing steps (FinishRelease: a stopped release finished; FinishCountChange: a stopped assign's partition
count change taken back) have no undo, so after a lost reply gpupass reads the host again and says what is there
(HypervBackend._done_if_lost, then Backend.observe): done where the host shows it done
(test_hyperv_stopped_release.py, test_hyperv_undo_faults.py), "as it was" where the script never reached the host,
the host's own state where it stopped part-way, and "done", said as such, where only a later read shows it. Real
pywinrm against the lab endpoint; a script stopped part-way is the lab's model of a killed PowerShell (assumed as
hostmodel/interp.py says), after the statement the test finds by running the same script on a copy of the host."""
from __future__ import annotations

import threading

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import HostModel, lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC, GPUP_HOLDER, partitioned_lab_host
from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, stop_a_release_half_way

GPU = address_map([A100_2_LOC])[A100_2_LOC]
FINISH_RELEASE = "$step='owners'"            # what tells the finishing release script from the others
COUNT_SET_BACK = "$hv=@();$b=$false"


def backend_on(ep) -> HypervBackend:
    return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv",
                                password=Secret(PASSWORD)))


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


@pytest.fixture
def stopped_release(endpoint_factory):
    """ml-train's release stopped half-way (its A100 dismounted and on no VM, its settings not restored)."""
    model = lab_host()
    original = model.to_dict()
    ep = endpoint_factory(model, "basic")
    backend = backend_on(ep)
    execute(backend, plan(backend, AssignmentRequest("ml-train", (GPU,))))
    stop_a_release_half_way(backend, ep, "ml-train")
    return model, ep, backend, original


@pytest.fixture
def count_changed(endpoint_factory):
    """An assign of a partition to ml-train stopped after its count change: 16 partitions, none held, its note."""
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = [16, 32]
    original = model.to_dict()
    name = partitionable_gpu_name(model.partitionable[0].instance_id)
    assert run_script(model, S.partition_count_script(name, 16, 32, "ml-train")).exit_code == 0
    ep = endpoint_factory(model, "basic")
    return model, ep, backend_on(ep), original


def never_reaching_the_host(ep, marker: str) -> threading.Thread:
    """The next script holding `marker` is held at the endpoint, then its connection closed without running it (a
    request lost on the way: the host never sees it)."""
    ep.hold_next_command(containing=marker, runs=False)

    def let_go() -> None:
        assert ep.command_held.wait(60)
        ep.release_command()
    thread = threading.Thread(target=let_go, daemon=True)
    thread.start()
    return thread


def statements_until(model, script: str, reached) -> int:
    """The fewest statements of `script` after which `reached(model copy)` holds (the lab's kill point)."""
    for n in range(1, 400):
        trial = HostModel.from_json(model.to_json())
        run_script(trial, script, stop_after=n)
        if reached(trial):
            return n
    raise AssertionError("the script never reached that point")


def test_a_finishing_release_that_never_reached_the_host_is_read_back_as_it_was(stopped_release):
    model, ep, backend, _ = stopped_release
    before = model.to_dict()
    finishing = plan(backend, ReleaseRequest("ml-train"))
    thread = never_reaching_the_host(ep, FINISH_RELEASE)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, finishing)
    thread.join(10)
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    assert model.to_dict() == before
    execute(backend, plan(backend, ReleaseRequest("ml-train")))      # the same release again finishes it
    assert plan(backend, ReleaseRequest("ml-train")).steps == ()


def test_a_finishing_release_stopped_part_way_is_reported_as_the_host_shows_it(stopped_release):
    """Its PowerShell stopped after Mount-VMHostAssignableDevice and before Enable-PnpDevice: the host read again shows
    the device mounted but disabled and the settings not restored -- said so, not rolled back; the same release again
    finishes it."""
    model, ep, backend, original = stopped_release
    finishing = plan(backend, ReleaseRequest("ml-train"))
    (step,) = finishing.steps
    device = model.device_by_location(A100_2_LOC)
    after = statements_until(model, step.preview, lambda m: not m.device_by_location(A100_2_LOC).dismounted)
    ep.kill_next_script_after(after, FINISH_RELEASE)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, finishing)
    assert not device.dismounted and not device.enabled              # part-way, as the test set it up
    message = caught.value.message
    assert caught.value.rolled_back is False, message
    assert "the host, read again, shows the release part-way finished" in message
    assert "mounted back on the host but still disabled" in message and "gpupass status hv" in message
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert model.to_dict() == original


def test_a_finishing_release_whose_reply_and_read_back_are_lost_is_said_done_once_the_host_is_read(stopped_release):
    """The reply lost, and the read right after it too: the loss stands, and the core's own read of the host (observe)
    finds it finished -- said as done, never as a step to undo by hand."""
    model, ep, backend, original = stopped_release
    finishing = plan(backend, ReleaseRequest("ml-train"))
    ep.drop_next_receive(2)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, finishing)
    message = caught.value.message
    assert caught.value.rolled_back is False, message
    assert "the host, read again, shows it done: nothing of what it finishes is left there" in message
    assert "could not be undone" not in message
    assert model.to_dict() == original
    assert plan(backend, ReleaseRequest("ml-train")).steps == ()


def test_a_count_take_back_that_never_reached_the_host_is_read_back_as_it_was(count_changed):
    model, ep, backend, original = count_changed
    before = model.to_dict()
    taking_back = plan(backend, ReleaseRequest("ml-train"))
    thread = never_reaching_the_host(ep, COUNT_SET_BACK)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, taking_back)
    thread.join(10)
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    assert model.to_dict() == before
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert model.to_dict() == original


def test_a_count_take_back_stopped_between_its_writes_is_reported_as_the_host_shows_it(count_changed):
    """Stopped after Set-VMHostPartitionableGpu set the count back and before its note came out: said so (the count
    and the note), not rolled back; the same release again takes the note out."""
    model, ep, backend, original = count_changed
    taking_back = plan(backend, ReleaseRequest("ml-train"))
    (step,) = taking_back.steps
    after = statements_until(model, step.preview, lambda m: m.partitionable[0].partition_count == 32)
    ep.kill_next_script_after(after, COUNT_SET_BACK)
    with pytest.raises(OperationFailed) as caught:
        execute(backend, taking_back)
    message = caught.value.message
    assert caught.value.rolled_back is False, message
    assert model.partitionable[0].partition_count == 32 and S.COUNT_BEGIN in model.vm("ml-train").notes
    assert "is 32 (16 when planned)" in message and "the note of the change is still in VM 'ml-train''s notes" in message
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert model.to_dict() == original
