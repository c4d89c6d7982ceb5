"""Claims on vSphere: concurrent assigns of one host device from several processes (each its own pyvmomi
session), identical concurrent assigns, and the simulator's changeVersion semantics they rely on.
Rounds: GPUPASS_RACE_ROUNDS (tests/bench/race_claims.py runs 100)."""

from __future__ import annotations

import copy
import os

import pytest

from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Conflict
from gpupass.core.service import execute
from support.race import race

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402

ROUNDS = int(os.environ.get("GPUPASS_RACE_ROUNDS", "3"))
CLONES = ["ml-1", "ml-2", "ml-3"]


def config_with_clones():
    cfg = lab_config()
    template = next(vm for vm in cfg["vms"] if vm["name"] == "ml-train")
    cfg["vms"] += [{**copy.deepcopy(template), "name": name} for name in CLONES]
    return cfg


def open_backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(target(sim))


def holders(sim, host="esx02.lab.local", address=A100_ACTIVE):
    with open_backend(sim) as backend:
        return sorted(vm.name for vm in backend.inventory().vms if vm.location == host and address in vm.assigned)


def passthrough_count(sim, vm_name):
    si = sim.connect()
    vm = next(v for v in si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine],
                                                                     True).view if v.name == vm_name)
    return len([d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualPCIPassthrough)])


def assigner(sim):
    def prepare(vm):
        backend = open_backend(sim)
        result = plan(backend, AssignmentRequest(vm, (A100_ACTIVE,)))
        assert not result.blocked, result.findings
        return lambda: execute(backend, result)
    return prepare


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_of_concurrent_assigns_of_one_device_exactly_one_wins(fresh_vcsim, round_):
    sim = fresh_vcsim(config_with_clones(), username=USER)
    with open_backend(sim) as backend:
        before = {vm.name: vm for vm in backend.inventory().vms}
    runs = race(assigner(sim), CLONES)
    winners = [run.name for run in runs if run.kind == "applied"]
    assert len(winners) == 1, runs
    assert holders(sim) == winners
    with open_backend(sim) as backend:
        after = {vm.name: vm for vm in backend.inventory().vms}
    for run in runs:
        if run.name != winners[0]:
            assert run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True, runs
            assert after[run.name] == before[run.name]  # its own change (and its claim) undone


def test_identical_concurrent_assigns_add_the_device_once(fresh_vcsim):
    sim = fresh_vcsim(config_with_clones(), username=USER)
    runs = race(assigner(sim), ["ml-1"] * 3)
    # each process's own outcome: exactly one did the work; the others' writes were refused by the changeVersion
    # the first one changed (exit 6, nothing of theirs applied) or, planned after it, had nothing to do
    assert [run.kind for run in runs].count("applied") == 1, runs
    assert all(run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True
               or run.kind == "nothing-to-do" and run.exit_code == 0 for run in runs if run.kind != "applied"), runs
    assert passthrough_count(sim, "ml-1") == 1
    assert holders(sim) == ["ml-1"]


def test_the_simulator_refuses_a_stale_change_version_like_vsphere(fresh_vcsim):
    """VirtualMachineConfigSpec.changeVersion (vSphere API reference): with a version that is no longer the
    VM's, ReconfigVM_Task fails with ConcurrentAccess and changes nothing; each change gives a new version."""
    sim = fresh_vcsim(username=USER)
    si = sim.connect()
    vm = next(v for v in si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine],
                                                                     True).view if v.name == "ml-train")
    first = vm.config.changeVersion
    assert first
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="one", changeVersion=first)))
    second = vm.config.changeVersion
    assert second != first
    with pytest.raises(vim.fault.ConcurrentAccess):
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="two", changeVersion=first)))
    assert vm.config.annotation == "one" and vm.config.changeVersion == second


def test_a_change_between_plan_and_apply_is_a_conflict_and_changes_nothing(fresh_vcsim):
    sim = fresh_vcsim(username=USER)
    backend = open_backend(sim)
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
    si = sim.connect()
    vm = next(v for v in si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine],
                                                                     True).view if v.name == "ml-train")
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="another admin")))
    with pytest.raises(Conflict) as caught:
        execute(backend, result)
    assert caught.value.rolled_back and caught.value.exit_code == 6
    assert holders(sim) == [] and vm.config.annotation == "another admin"
    backend.close()


def test_an_assign_stopped_after_the_host_step_is_shown_by_status_and_a_rerun_finishes_it(fresh_vcsim):
    """Issue 10 item 9: the host changed and the VM not -- the intent record in the VM says so."""
    from tests.integration.esxi.test_esxi_host_rules import T4

    sim = fresh_vcsim(username=USER)
    killed = open_backend(sim)
    result = plan(killed, AssignmentRequest("cad-ws", (T4,)))
    assert [s.action for s in result.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"]
    for step in result.steps[:2]:  # the run dies right after the host step
        killed.apply(step)
    killed.close()
    with open_backend(sim) as backend:
        vm = backend.inventory().find_vm("cad-ws")
        assert T4 not in vm.assigned
        assert len(vm.unfinished) == 1 and "stopped before its last step" in vm.unfinished[0]
        assert str(T4) in vm.unfinished[0] and "run the same `gpupass assign` again" in vm.unfinished[0]
        execute(backend, plan(backend, AssignmentRequest("cad-ws", (T4,))))
        vm = backend.inventory().find_vm("cad-ws")
        assert T4 in vm.assigned and vm.unfinished == ()


THREAD_ROUNDS = int(os.environ.get("GPUPASS_THREAD_RACE_ROUNDS", "100"))


def test_100_rounds_of_concurrent_assigns_give_one_device_to_one_vm(fresh_vcsim):
    """0 double assignments in 100 concurrent rounds (issue 10), in CI: three clients, each in its own thread with
    its own pyvmomi session (kept between rounds), plan, wait at a barrier and assign at once. Every tenth round all
    three give the device to the same VM: it holds it once. The winner's release puts the VM back between rounds.

    The three plans of a round are made from one read of the host (as if the three admins read it at the same
    moment: pyVmomi's parsing of a whole inventory costs more than the race); each apply re-reads its VM itself."""
    from gpupass.core.domain.request import ReleaseRequest
    from gpupass.core.plugins import default_registry
    from gpupass.core.service import make_plan
    from support.race import race_threads

    sim = fresh_vcsim(config_with_clones(), username=USER)
    backends = {vm: open_backend(sim) for vm in CLONES}
    reader = backends[CLONES[0]]
    facts = reader.inventory()
    before = {vm.name: vm for vm in facts.vms}
    tally: dict[str, int] = {}
    wrong = []
    try:
        for round_ in range(THREAD_ROUNDS):
            identical = round_ % 10 == 9
            target_of = {vm: (CLONES[0] if identical else vm) for vm in CLONES}

            def prepare(client, target_of=target_of, facts=facts):
                backend = backends[client]
                result = make_plan(backend, facts, AssignmentRequest(target_of[client], (A100_ACTIVE,)),
                                   default_registry())
                assert not result.blocked, result.findings
                return lambda: execute(backend, result)

            outcomes = race_threads(prepare, CLONES)
            winners = [c for c, kind, _ in outcomes if kind == "applied"]
            for client, kind, detail in outcomes:
                tally[kind] = tally.get(kind, 0) + 1
                assert kind in ("applied", "conflict"), (round_, client, kind, detail)
                assert kind == "applied" or "rolled_back=True" in detail, (round_, client, detail)
            after_facts = reader.inventory()
            after = {vm.name: vm for vm in after_facts.vms}
            holders = sorted(n for n in CLONES if A100_ACTIVE in after[n].assigned)
            counts = {n: passthrough_count(sim, n) for n in holders}
            if len(holders) != 1 or counts[holders[0]] != 1 or not winners or \
                    any(target_of[w] != holders[0] for w in winners) or (not identical and len(winners) != 1):
                wrong.append((round_, counts, outcomes))
            for name in CLONES:
                if name not in holders:
                    assert after[name] == before[name], (round_, name)   # its own change (and claim) undone
            for name in holders:
                execute(reader, make_plan(reader, after_facts, ReleaseRequest(name), default_registry()))
            facts = reader.inventory()
    finally:
        for backend in backends.values():
            backend.close()
    print(f"esxi (vcsim): {THREAD_ROUNDS} rounds, {len(wrong)} double/none, outcomes {tally}")
    assert wrong == [], '\n'.join(map(repr, wrong))
