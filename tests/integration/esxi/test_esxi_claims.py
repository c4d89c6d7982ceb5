"""Claims on vSphere: concurrent assigns of one host device from several processes (each its own pyvmomi
session, in processes started with 'spawn': tests/support/race.py), identical concurrent assigns, and the
simulator's changeVersion semantics they rely on. Rounds: GPUPASS_RACE_ROUNDS (100 by default, as in CI)."""

from __future__ import annotations

import copy
import functools
import os
from collections import Counter
from types import SimpleNamespace
from typing import Callable

import pytest

from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Conflict
from gpupass.core.service import execute
from support.race import RacePool

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402

ROUNDS = int(os.environ.get("GPUPASS_RACE_ROUNDS", "100"))
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


def assign_in_a_worker(sim: SimpleNamespace, vm: str) -> Callable[[], object]:
    """One worker's run in a RacePool (module-level: the spawned worker imports it by name): its own new pyvmomi
    session, a read of the inventory, a plan; the apply logs the session out. `sim`: the simulator's port,
    password and CA file (what target() reads of it)."""
    backend = open_backend(sim)
    result = plan(backend, AssignmentRequest(vm, (A100_ACTIVE,)))
    assert not result.blocked, result.findings

    def go() -> object:
        with backend:
            return execute(backend, result)
    return go


def _address_of(sim) -> SimpleNamespace:
    return SimpleNamespace(port=sim.port, password=sim.password, ca_file=str(sim.ca_file))


def test_identical_concurrent_assigns_add_the_device_once(fresh_vcsim):
    sim = fresh_vcsim(config_with_clones(), username=USER)
    with RacePool(3) as pool:
        runs = pool.round(functools.partial(assign_in_a_worker, _address_of(sim)), ["ml-1"] * 3)
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


def test_100_rounds_of_concurrent_assigns_give_one_device_to_one_vm(fresh_vcsim):
    """0 double assignments in 100 concurrent rounds (issue 10), in CI: three processes (support.race.RacePool,
    started once), each opening its own pyvmomi session every round, read the inventory, plan, wait at one barrier
    and assign the device at the same moment. Exactly one wins; the others exit 6 with their own change (and claim)
    undone. Every tenth round all three give it to the same VM: one does the work, each other one is refused by the
    changeVersion the first changed (exit 6) or, planned after it, has nothing to do; the VM holds it once. Between
    rounds gpupass's own release gives the device back."""
    from gpupass.core.domain.request import ReleaseRequest
    from gpupass.core.plugins import default_registry
    from gpupass.core.service import make_plan

    sim = fresh_vcsim(config_with_clones(), username=USER)
    prepare = functools.partial(assign_in_a_worker, _address_of(sim))
    tally: Counter[str] = Counter()
    wrong = []
    with open_backend(sim) as admin, RacePool(len(CLONES)) as pool:
        before = {vm.name: vm for vm in admin.inventory().vms}
        for round_ in range(ROUNDS):
            identical = round_ % 10 == 9
            runs = pool.round(prepare, [CLONES[0]] * len(CLONES) if identical else CLONES)
            tally.update(run.kind for run in runs)
            facts = admin.inventory()
            after = {vm.name: vm for vm in facts.vms}
            holders = sorted(n for n in CLONES if A100_ACTIVE in after[n].assigned)
            counts = {n: passthrough_count(sim, n) for n in holders}
            winners = [run.name for run in runs if run.kind == "applied"]
            others_ok = all(run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True
                            or identical and run.kind == "nothing-to-do" for run in runs if run.kind != "applied")
            if len(holders) != 1 or counts[holders[0]] != 1 or len(winners) != 1 or holders != winners or \
                    not others_ok or any(after[n] != before[n] for n in CLONES if n not in holders):
                wrong.append((round_, counts, runs))
            for name in holders:
                execute(admin, make_plan(admin, facts, ReleaseRequest(name), default_registry()))
    print(f"esxi (vcsim): {ROUNDS} rounds x {len(CLONES)} processes, {len(wrong)} wrong, outcomes {dict(tally)}")
    assert wrong == [], "\n".join(map(repr, wrong[:5]))
