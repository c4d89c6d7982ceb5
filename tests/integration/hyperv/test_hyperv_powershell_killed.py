"""The host's PowerShell killed in the middle of a script (issue 10's fault matrix): every write script of the Hyper-V
backend stopped after each of its statements k, in the lab (a MODEL of that failure, assumed: no published output of it;
what it rests on is said beside it, backends/hyperv/lab/hostmodel/interp.py, KILLED_EXIT_CODE).

The scripts: the assign, the release, the one finishing a stopped release, the partition count change, the partition
add and removal, the take-backs of a failing release (re-add, the assign script for a device mounted back, the intent's
removal), the undo scripts (the release
script undoing an assign, the assign script undoing a release, the count set back, the partition removal undoing an
add, the partition add undoing a removal) and the release taking back a count change a stopped assign left. For each k the host after the killed script
alone is computed (the model run on the host as it was just before the script); the k's that leave the same host and
the same reply are one fault to gpupass, which is then run once for them: gpupass over WinRM, the script killed at k,
the rest of the run as gpupass makes it (its read-back, its undo).

Then: gpupass's report is honest (rolled back: exactly as before; done: exactly after), the host is exactly before or
after the command or `status` reports what is left with the command that finishes it, and following `status` then the
same command again converges to exactly the command's outcome, with nothing left to do.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
from typing import Any, Callable

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import HostModel, lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_LOC,
                                                   T4_LOC, T4_NO_DRIVER_LOC, partitionable_gpu_name,
                                                   partitioned_lab_host)
from gpupass.core import plugins
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.errors import GpupassError
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, G, partitions_of_two_gpus

ADDRESSES = address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])
GPU, RTX = ADDRESSES[A100_2_LOC], ADDRESSES[RTX_GPUP_LOC]
ASSIGN, RELEASE = AssignmentRequest("ml-train", (GPU,)), ReleaseRequest("ml-train")
SHARE_16 = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-16"))
SHARE_32 = AssignmentRequest("ml-train", (RTX,), AssignOptions(share="partitions-32"))
RELEASE_SHARE = ReleaseRequest("ml-train", (RTX,))
# what tells each script from the others (the assign script's own rollback names Remove-VMAssignableDevice too)
ASSIGN_SCRIPT = "$step='Dismount-VMHostAssignableDevice '+$p"
RELEASE_SCRIPT = "$step='Remove-VMAssignableDevice '+$p"
FINISH_RELEASE = "$step='owners'"
READD = "added=$ok"
DROP_INTENT = "if($gj){$i2="
COUNT_CHANGE = "Set-VM -VM $v -Notes ($cs+"
COUNT_SET_BACK = "$hv=@();$b=$false"
PARTITION_ADD = "Add-VMGpuPartitionAdapter -VM $v"
PARTITION_REMOVE = "Remove-VMGpuPartitionAdapter -VMGpuPartitionAdapter"
RELEASE_NOTE_DROP = "$rh=$false"   # the last step of a release of several GPUs' partitions (its note taken out)


def share_lab() -> HostModel:
    """The lab's GPU-P GPU with no partition held, 32 partitions now, 16 and 32 valid."""
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = [16, 32]
    return model


def assigned() -> HostModel:
    model = lab_host()
    assert run_script(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G)).exit_code == 0
    return model


def release_stopped() -> HostModel:
    """ml-train's release stopped after Remove-VMAssignableDevice (the host failed its mount, nobody gave it back)."""
    model = assigned()
    model.inject_fault("Mount-VMHostAssignableDevice")
    assert run_script(model, S.release_script("ml-train", [A100_2_LOC])).exit_code == 1
    model.clear_faults()
    return model


def partition_held() -> HostModel:
    model = share_lab()
    name = partitionable_gpu_name(model.partitionable[0].instance_id)
    assert run_script(model, S.partition_add_script("ml-train", name)).exit_code == 0
    return model


def count_changed() -> HostModel:
    """An assign of a partition stopped after its count change: 16 partitions, none held, the intent in the notes."""
    model = share_lab()
    name = partitionable_gpu_name(model.partitionable[0].instance_id)
    assert run_script(model, S.partition_count_script(name, 16, 32, "ml-train")).exit_code == 0
    return model


def two_partitions_held() -> HostModel:
    """ml-train holding a partition of two GPUs, so that a release of both is two steps: the second failing, the first
    is undone by adding its partition back; or either killed."""
    return partitions_of_two_gpus()


def fail_next(cmdlet: str, nth: int = 1) -> Callable[[Any], None]:
    return lambda endpoint: endpoint.inject_fault(cmdlet, nth)


def lose_next_reply(endpoint: Any) -> None:
    """The reply of the first script after planning (the command's first write) lost after the host ran it."""
    endpoint.drop_next_receive()


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    host: Callable[[], HostModel]
    request: Any
    killed: str                                     # what tells the script killed
    first: Callable[[Any], None] | None = None      # the fault before it in the same run (for the second writes)


CASES = [
    Case("assign", lab_host, ASSIGN, ASSIGN_SCRIPT),
    Case("release", assigned, RELEASE, RELEASE_SCRIPT),
    Case("finishing release", release_stopped, RELEASE, FINISH_RELEASE),
    Case("partition count", share_lab, SHARE_16, COUNT_CHANGE),
    Case("partition add", share_lab, SHARE_32, PARTITION_ADD),
    Case("partition removal", partition_held, RELEASE_SHARE, PARTITION_REMOVE),
    Case("take-back: re-add", assigned, RELEASE, READD, fail_next("Mount-VMHostAssignableDevice")),
    Case("take-back: intent removal", assigned, RELEASE, DROP_INTENT, fail_next("Mount-VMHostAssignableDevice")),
    Case("take-back: assign again", assigned, RELEASE, ASSIGN_SCRIPT, fail_next("Enable-PnpDevice")),
    Case("undo of an assign", lab_host, ASSIGN, RELEASE_SCRIPT, lose_next_reply),
    Case("undo of a release", assigned, RELEASE, ASSIGN_SCRIPT, lose_next_reply),
    Case("undo: count set back", share_lab, SHARE_16, COUNT_SET_BACK, fail_next("Add-VMGpuPartitionAdapter")),
    Case("undo of a partition add", share_lab, SHARE_32, PARTITION_REMOVE, lose_next_reply),
    Case("undo of a partition removal", two_partitions_held, RELEASE, PARTITION_ADD,
         fail_next("Remove-VMGpuPartitionAdapter", 2)),
    Case("partition release of two GPUs: its first step", two_partitions_held, RELEASE, PARTITION_REMOVE),
    Case("partition release of two GPUs: its last step", two_partitions_held, RELEASE, RELEASE_NOTE_DROP),
    Case("count change taken back", count_changed, RELEASE, COUNT_SET_BACK),
]


def backend_for(endpoint: Any) -> HypervBackend:
    return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{endpoint.port}/?transport=basic", name="hv",
                                password=Secret(PASSWORD)))


def plan(backend: HypervBackend, request: Any) -> Any:
    return make_plan(backend, backend.inventory(), request, plugins.default_registry())


_SPENT_INTENT = re.compile(r',"Releasing":\[[^\]]*\]|,"Releasing":"[^"]*"')


def exactly(model: HostModel, spent_intent: bool = True) -> str:
    """The host, exactly -- a VM's partitions aside, compared by GPU only: a new adapter's Id is new each time, one
    added back comes last and with the settings its removal read given explicitly (no case here asks for settings)."""
    data = model.to_dict()
    for vm in data["vms"]:
        if not spent_intent:
            vm["notes"] = _SPENT_INTENT.sub("", vm["notes"])
        vm["gpu_partitions"] = sorted(p["instance_path"] for p in vm.get("gpu_partitions") or [])
    return json.dumps(data, sort_keys=True)


def host(model: HostModel) -> str:
    """The host as compared with before and after: a release's intent left in a record naming devices the VM holds
    again names nothing to do (records.stopped_runs: `status` has nothing to say of it) and is left out."""
    return exactly(model, spent_intent=False)


def outcome(case: Case, endpoint_factory: Any) -> str:
    """The host after the command run whole, without any fault."""
    model = case.host()
    endpoint = endpoint_factory(model, "basic")
    with backend_for(endpoint) as backend:
        execute(backend, plan(backend, case.request))
    return host(model)


def kill_points(case: Case, endpoint_factory: Any) -> dict[str, list[int]]:
    """Every k at which the script can be killed, grouped by what the kill leaves (the host and the reply)."""
    model = case.host()
    endpoint = endpoint_factory(model, "basic")
    endpoint.kill_next_script_after(0, case.killed)
    with backend_for(endpoint) as backend:
        planned = plan(backend, case.request)
        if case.first:
            case.first(endpoint)
        with pytest.raises(GpupassError):
            execute(backend, planned)
    assert endpoint.before_killed is not None, f"{case.name}: the run never sent the script"
    before, script = endpoint.before_killed
    whole = run_script(HostModel.from_dict(before), script)
    assert not whole.killed and whole.statements > 0
    groups: dict[str, list[int]] = {}
    for k in range(whole.statements + 1):           # k = all of them: killed before the last `if(...){exit 1}`
        left = HostModel.from_dict(before)
        result = run_script(left, script, stop_after=k)
        assert result.killed, (case.name, k)
        groups.setdefault(json.dumps([exactly(left), result.stdout, result.exit_code]), []).append(k)
    return groups


def commands_in(note: str) -> list[list[str]]:
    """The gpupass commands a `status` note names, each as its words (a placeholder "GPU" left out)."""
    found = [shlex.split(c) for c in re.findall(r"`(gpupass [^`]+)`", note)]
    return [words for words in found if "GPU" not in words]


def request_of(words: list[str]) -> Any:
    op, vm, rest = words[1], words[3], words[4:]
    if op == "release":
        return ReleaseRequest(vm, tuple(PciAddress.parse(w) for w in rest))
    assert op == "assign", words
    if "--share" not in rest:   # whole GPUs (an assign of the devices a VM holds: records._intent_left)
        return AssignmentRequest(vm, tuple(PciAddress.parse(w) for w in rest))
    assert rest[1] == "--share", words
    return AssignmentRequest(vm, (PciAddress.parse(rest[0]),), AssignOptions(share=rest[2]))


def unfinished(backend: HypervBackend) -> dict[str, tuple[str, ...]]:
    return {vm.name: vm.unfinished for vm in backend.inventory().vms if vm.unfinished}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_hosts_powershell_killed_after_each_statement_leaves_the_host_before_after_or_reported(case,
                                                                                              endpoint_factory):
    before, after = host(case.host()), outcome(case, endpoint_factory)
    for ks in kill_points(case, endpoint_factory).values():
        k = ks[0]
        where = f"{case.name}, killed after statement {k} (as after {ks})"
        model = case.host()
        endpoint = endpoint_factory(model, "basic")
        with backend_for(endpoint) as backend:
            planned = plan(backend, case.request)
            endpoint.kill_next_script_after(k, case.killed)
            if case.first:
                case.first(endpoint)
            try:
                execute(backend, planned)
                error = None
            except GpupassError as caught:
                error = caught
            endpoint.clear_faults()
            assert endpoint.runs and any(killed for _, _, killed in endpoint.runs), where
            now = host(model)
            # gpupass's own report is honest
            if error is None:
                assert now == after, where
            elif error.rolled_back is True:
                assert now == before, f"{where}: reported rolled back: {error.message}"
            # the host is exactly before or after, or `status` says what is left with the command that finishes it
            left = unfinished(backend)
            if now not in (before, after):
                assert left, f"{where}: the host is neither before nor after and `status` says nothing"
            for vm, notes in left.items():
                for note in notes:
                    assert commands_in(note), f"{where}: {vm}: {note}"
            # following `status`, then the same command again, converges to exactly the command's outcome
            for vm, notes in left.items():
                for note in notes:
                    if unfinished(backend).get(vm):
                        # the command of the same kind as the one run (a release reverts, an assign finishes), else
                        # the one naming the most (the GPU too)
                        op = "release" if isinstance(case.request, ReleaseRequest) else "assign"
                        words = max(commands_in(note), key=lambda w: (w[1] == op, len(w)))
                        execute(backend, plan(backend, request_of(words)))
            assert unfinished(backend) == {}, where
            execute(backend, plan(backend, case.request))
            assert host(model) == after, where
            assert plan(backend, case.request).steps == (), where
