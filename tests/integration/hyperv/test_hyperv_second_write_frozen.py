"""The endpoint frozen (SIGSTOP) just before a Hyper-V write that follows a first fault in the same run, and before
the GPU partition count change, thawed after gpupass gave up (issue 10's fault matrix; tests/support/hyperv_faults.py):

* the partition count change (Set-VMHostPartitionableGpu, with its intent in the VM's notes);
* the take-backs of a release failing on the host after Remove-VMAssignableDevice: the re-add (readd_script) and the
  intent's removal (drop_intent_script);
* the undo scripts: the count set back (after the partition's add failed), the release script undoing an assign and
  the assign script undoing a release (each after the first script's reply was lost and the host read back showed it
  done), the partition removal undoing an add (the same).

gpupass must say the outcome is not known, never that the VM is as it was. The thawed endpoint runs the script that
was waiting; the host is then read back as it is, `status` says what is left (nothing, or the stopped assign with the
commands that finish or revert it), and the same command again converges.
"""
from __future__ import annotations

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_LOC,
                                                   T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, G
from support.hyperv_faults import endpoint_process, frozen_before_its_write, reply_lost

ADDRESSES = address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])
GPU, RTX = ADDRESSES[A100_2_LOC], ADDRESSES[RTX_GPUP_LOC]
ASSIGN, RELEASE = AssignmentRequest("ml-train", (GPU,)), ReleaseRequest("ml-train")
SHARE_16 = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-16"))
SHARE_32 = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-32"))
# what tells each script from the others (the assign script's own rollback names Remove-VMAssignableDevice too)
COUNT_CHANGE = "Set-VM -VM $v -Notes ($cs+"
COUNT_SET_BACK = "$hv=@();$b=$false"
READD = "added=$ok"
DROP_INTENT = "if($gj){$i2="
RELEASE_SCRIPT = "$step='Remove-VMAssignableDevice '+$p"
ASSIGN_SCRIPT = "$step='Dismount-VMHostAssignableDevice '+$p"
PARTITION_ADD = "Add-VMGpuPartitionAdapter -VM $v"
PARTITION_REMOVE = "Remove-VMGpuPartitionAdapter -VMGpuPartitionAdapter"


def share_lab():
    """The lab's GPU-P GPU with no partition held, 32 partitions now, 16 and 32 valid."""
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = [16, 32]
    return model


def assigned(model):
    assert run_script(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G)).exit_code == 0
    return model


@pytest.fixture
def serve(tmp_path):
    """The endpoint in its own process for `model` (with `faults`: cmdlets whose next call fails there)."""
    started = []

    def start(model, faults=()):
        context = endpoint_process(tmp_path, model, USER, PASSWORD, faults)
        endpoint = context.__enter__()
        started.append(context)
        target = Target(uri=f"hyperv+http://{USER}@127.0.0.1:{endpoint.port}/?transport=basic", name="hv",
                        password=Secret(PASSWORD))
        return endpoint, target
    yield start
    for context in started:
        context.__exit__(None, None, None)


def status(target):
    with HypervBackend(target) as backend:
        return {vm.name: vm.unfinished for vm in backend.inventory().vms}


def again(target, request):
    """The same command again; once more after it, nothing to do."""
    with HypervBackend(target) as backend:
        execute(backend, make_plan(backend, backend.inventory(), request, plugins.default_registry()))
        assert make_plan(backend, backend.inventory(), request, plugins.default_registry()).steps == ()


def test_frozen_before_the_partition_count_change_status_names_the_stopped_assign_and_a_rerun_converges(serve):
    """Frozen with the count script about to go: reported not known; the thawed endpoint runs it whole (the intent in
    ml-train's notes, then 16 partitions); `status` names the stopped assign with the count before and after and the
    commands that finish or revert it; the same assign again finishes it, the add taking the note out."""
    endpoint, target = serve(share_lab())
    error = frozen_before_its_write(endpoint, target, SHARE_16, COUNT_CHANGE,
                                    lambda: endpoint.model().partitionable[0].partition_count == 16)
    assert "could not be read again" in error.message
    model = endpoint.model()
    assert model.vm("ml-train").gpu_partitions == [] and S.COUNT_BEGIN in model.vm("ml-train").notes
    (left,) = status(target)["ml-train"]
    assert "from 32 to 16" in left and "--share partitions-16` finishes it" in left and "sets the count back" in left
    again(target, SHARE_16)
    model = endpoint.model()
    assert model.partitionable[0].partition_count == 16 and len(model.vm("ml-train").gpu_partitions) == 1
    assert model.vm("ml-train").notes == "" and status(target)["ml-train"] == ()


def test_frozen_before_the_count_set_back_after_a_failed_add_ends_exactly_as_it_was(serve):
    """The add fails on the host, so gpupass sets the count back: frozen with that script about to go. Reported not
    known (the undo and the read-back both unanswered); the thawed endpoint sets the count back and takes the note out:
    exactly as it was, `status` has nothing to say, and the same assign again converges."""
    model = share_lab()
    original = model.to_dict()
    endpoint, target = serve(model, faults=["Add-VMGpuPartitionAdapter"])
    frozen_before_its_write(endpoint, target, SHARE_16, COUNT_SET_BACK,
                            lambda: endpoint.model().partitionable[0].partition_count == 32)
    assert endpoint.model().to_dict() == original
    assert status(target)["ml-train"] == ()
    again(target, SHARE_16)


def test_frozen_before_the_undo_of_a_partition_add_whose_reply_was_lost_ends_exactly_as_it_was(serve):
    """The add's reply is lost; read back, the partition is there, so gpupass removes it: frozen with that removal about
    to go. The thawed endpoint removes it: exactly as it was; the same assign again converges."""
    model = share_lab()
    original = model.to_dict()
    endpoint, target = serve(model)
    frozen_before_its_write(endpoint, target, SHARE_32, PARTITION_REMOVE,
                            lambda: endpoint.model().vm("ml-train").gpu_partitions == [],
                            prepare=reply_lost(PARTITION_ADD))
    assert endpoint.model().to_dict() == original and status(target)["ml-train"] == ()
    again(target, SHARE_32)


def test_frozen_before_the_undo_of_a_partition_removal_ends_exactly_as_before_the_release(serve):
    """A release of ml-train's partitions of two GPUs: the second removal fails on the host, so gpupass adds the first
    partition back (with the settings it had): frozen with that add about to go. The thawed endpoint adds it: as before
    the release (the adapter's Id aside, new); the same release again converges."""
    from test_hyperv_powershell_killed import two_partitions_held

    def partitions(model):
        """Each VM's partitions, by GPU (the one added back comes last, with the settings the removal read from it
        given explicitly: the same values)."""
        return {vm.name: sorted(p.instance_path for p in vm.gpu_partitions) for vm in model.vms}

    model = two_partitions_held()
    endpoint, target = serve(model, faults=["Remove-VMGpuPartitionAdapter:2"])
    frozen_before_its_write(endpoint, target, RELEASE, PARTITION_ADD,
                            lambda: len(endpoint.model().vm("ml-train").gpu_partitions) == 2)
    assert partitions(endpoint.model()) == partitions(model) and status(target)["ml-train"] == ()
    again(target, RELEASE)
    assert endpoint.model().vm("ml-train").gpu_partitions == []


def test_frozen_before_the_undo_of_an_assign_whose_reply_was_lost_ends_exactly_as_it_was(serve):
    """The assign script's reply is lost; read back, the device is on the VM, so gpupass runs the release script:
    frozen with it about to go. The thawed endpoint releases exactly (settings restored from the record): as it was."""
    model = lab_host()
    original = model.to_dict()
    endpoint, target = serve(model)
    frozen_before_its_write(endpoint, target, ASSIGN, RELEASE_SCRIPT,
                            lambda: endpoint.model().device_by_location(A100_2_LOC).enabled,
                            prepare=reply_lost(ASSIGN_SCRIPT))
    assert endpoint.model().to_dict() == original and status(target)["ml-train"] == ()
    again(target, ASSIGN)


def test_frozen_before_the_undo_of_a_release_whose_reply_was_lost_ends_exactly_as_before_the_release(serve):
    """The release script's reply is lost; read back, released, so gpupass gives the device back with the assign
    script: frozen with it about to go. The thawed endpoint assigns it again, record included: as before the release;
    the same release again converges."""
    model = assigned(lab_host())
    before = model.to_dict()
    endpoint, target = serve(model)
    frozen_before_its_write(endpoint, target, RELEASE, ASSIGN_SCRIPT,
                            lambda: endpoint.model().device_by_location(A100_2_LOC).assigned_vm == "ml-train",
                            prepare=reply_lost(RELEASE_SCRIPT))
    assert endpoint.model().to_dict() == before and status(target)["ml-train"] == ()
    again(target, RELEASE)
    assert endpoint.model().to_dict() == lab_host().to_dict()


@pytest.mark.parametrize("frozen, failing", [(READD, "Mount-VMHostAssignableDevice"),
                                             (DROP_INTENT, "Mount-VMHostAssignableDevice"),
                                             (ASSIGN_SCRIPT, "Enable-PnpDevice")])
def test_frozen_before_a_take_back_of_a_release_failing_on_the_host_leaves_the_vm_as_it_was(serve, frozen, failing):
    """The release fails on the host at Mount-VMHostAssignableDevice (or at Enable-PnpDevice), so gpupass gives the
    device back to the VM (readd_script; the assign script for a device mounted back) and takes the release's intent
    out of the record (drop_intent_script): frozen before either. The thawed endpoint runs it: the device on the VM
    again; after the intent's removal exactly as before the release, and after the re-add with the intent left naming
    nothing to give back (`status` shows it with what takes it out). The same release again releases exactly."""
    model = assigned(lab_host())
    before = model.to_dict()
    endpoint, target = serve(model, faults=[failing])
    frozen_before_its_write(endpoint, target, RELEASE, frozen,
                            lambda: endpoint.model().device_by_location(A100_2_LOC).assigned_vm == "ml-train"
                            and (frozen != DROP_INTENT or '"Releasing"' not in endpoint.model().vm("ml-train").notes))
    after = endpoint.model()
    assert after.device_by_location(A100_2_LOC).assigned_vm == "ml-train"
    if frozen == DROP_INTENT:
        assert after.to_dict() == before
        assert status(target)["ml-train"] == ()
    else:
        assert '"Releasing"' in after.vm("ml-train").notes
        (note,) = status(target)["ml-train"]    # shown, with what takes it out (records._intent_left)
        assert "stopped with nothing of it to give back" in note, note
    again(target, RELEASE)
    assert endpoint.model().to_dict() == lab_host().to_dict()


def test_frozen_before_the_take_back_of_a_stopped_count_change_is_reported_unknown_and_the_thawed_host_converges(serve):
    """A release of a VM whose stopped assign left a partition count change (FinishCountChange: the count set back, the
    note out): frozen with that script about to go. Reported not known; the thawed endpoint runs it: the count back to
    32 and the note out, `status` has nothing to say, and the release again has nothing to do."""
    model = share_lab()
    gpu = partitionable_gpu_name(model.partitionable[0].instance_id)
    assert run_script(model, S.partition_count_script(gpu, 16, 32, "ml-train")).exit_code == 0
    endpoint, target = serve(model)
    frozen_before_its_write(endpoint, target, RELEASE, COUNT_SET_BACK,
                            lambda: endpoint.model().partitionable[0].partition_count == 32)
    model = endpoint.model()
    assert S.COUNT_BEGIN not in model.vm("ml-train").notes and status(target)["ml-train"] == ()
    again(target, RELEASE)
