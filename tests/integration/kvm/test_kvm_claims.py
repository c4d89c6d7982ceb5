"""Claims on KVM: concurrent assigns of one GPU from several processes, each with its own libvirt connection,
through the lab's test-driver host file (every define is written back to the file, every read reloads it).

The workers (separate processes started with 'spawn', tests/support/race.py) plan first and then apply together,
so every run passes preflight and the claim alone must decide: exactly one wins, the others undo their own change and exit with a conflict.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Callable

import pytest

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.backends.kvm.lab.testdriver import LabKvmBackend
from gpupass.core.domain.claims import new_claim
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Conflict
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Target
from support.cli import GPUPASS
from support.race import RacePool

H100 = PciAddress.parse("0000:42:00.0")
CLONES = [f"ml-{i}" for i in range(1, 5)]
ROUNDS = int(os.environ.get("GPUPASS_RACE_ROUNDS", "100"))
WORKERS = 3


def add_clones(lab_file, names=CLONES) -> None:
    """Off EFI VMs like ml-train (a large-BAR GPU fits them without a blocker)."""
    ET.register_namespace("test", "http://libvirt.org/schemas/domain/test/1.0")
    node = ET.parse(lab_file)
    template = next(d for d in node.getroot().iter("domain") if d.findtext("name") == "ml-train")
    for index, name in enumerate(names):
        clone = ET.fromstring(ET.tostring(template))
        clone.find("name").text = name
        clone.find("uuid").text = f"6f1d2c8e-3b1a-4c52-9a57-0c1e7d2f8b{index:02x}"
        node.getroot().append(clone)
    node.write(lab_file)


def open_lab(lab_file) -> KvmBackend:
    return LabKvmBackend(Target(uri=f"test://{lab_file}", name="t", options={"persist_test_state": True}))


def holders(lab_file, address=H100) -> list[str]:
    with open_lab(lab_file) as backend:
        return [vm.name for vm in backend.inventory().vms if address in vm.assigned]


def definitions(lab_file) -> dict[str, str]:
    with open_lab(lab_file) as backend:
        return dict(sorted(backend._all_domain_xml().items()))


def assign_in_a_worker(lab_file: str, vm: str) -> Callable[[], object]:
    """One worker's run in a RacePool (a module-level function: the spawned worker imports it by name): its own new
    connection to the lab host, a read, a plan; the apply closes the connection."""
    backend = open_lab(lab_file)
    plan = make_plan(backend, backend.inventory(), AssignmentRequest(vm, (H100,)), default_registry())
    assert not plan.blocked, plan.findings

    def go() -> object:
        with backend:
            return execute(backend, plan)
    return go


def test_100_rounds_of_concurrent_assigns_from_separate_processes(lab_file):
    """0 double assignments in 100 concurrent rounds (issue 10), in CI: WORKERS processes (support.race.RacePool,
    started once), each opening its own connection every round, plan, wait at one barrier and assign the H100 at
    the same moment. Exactly one wins; the others exit 6 with their own change undone. Every tenth round all of them
    give it to the same VM: it holds it once. The lab file is put back as it was between rounds."""
    add_clones(lab_file, CLONES[:WORKERS])
    pristine = lab_file.read_bytes()
    before = definitions(lab_file)
    prepare = functools.partial(assign_in_a_worker, str(lab_file))
    tally: Counter[str] = Counter()
    wrong = []
    with RacePool(WORKERS) as pool:
        for round_ in range(ROUNDS):
            lab_file.write_bytes(pristine)
            identical = round_ % 10 == 9
            runs = pool.round(prepare, [CLONES[0]] * WORKERS if identical else CLONES[:WORKERS])
            tally.update(run.kind for run in runs)
            after = definitions(lab_file)
            held = {vm: [a for _, a in domxml.pci_hostdevs(domxml.parse(xml))].count(H100) for vm, xml in after.items()}
            holders = [vm for vm, count in held.items() if count]
            winners = [run.name for run in runs if run.kind == "applied"]
            losers_ok = all(run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True
                            for run in runs if run.kind != "applied")
            # identical rounds: without a secret driver a define replaces the whole definition (no compare-and-swap),
            # so a run that read the VM before another's define writes the same change again and may report
            # "applied" too; the VM holds the GPU once all the same
            if sum(held.values()) != 1 or not winners or set(winners) != set(holders) or not losers_ok or \
                    (not identical and len(winners) != 1) or \
                    any(after[vm] != before[vm] for vm in before if vm not in holders):
                wrong.append((round_, held, runs))
    print(f"kvm (test driver): {ROUNDS} rounds x {WORKERS} processes, {len(wrong)} wrong, outcomes {dict(tally)}")
    assert wrong == [], "\n".join(map(repr, wrong[:5]))


def test_identical_concurrent_assigns_converge_to_one_device_once(lab_file):
    add_clones(lab_file, ["ml-1"])
    with RacePool(3) as pool:
        runs = pool.round(functools.partial(assign_in_a_worker, str(lab_file)), ["ml-1"] * 3)
    xml = definitions(lab_file)["ml-1"]
    assert [a for _, a in domxml.pci_hostdevs(domxml.parse(xml))] == [H100], runs
    # Each run's own outcome (the pool reports every process, not one per VM). Without a secret driver a define
    # replaces the whole definition, with no compare-and-swap: a run that read the VM before another's define
    # writes the same change again, so several may report "applied" (each wrote it; the VM holds it once). With
    # libvirt secrets exactly one does the work (test_kvm_secret_claims_libvirtd.py).
    assert all(run.exit_code in (0, 6) for run in runs), runs
    assert all(run.rolled_back is True for run in runs if run.kind == "conflict"), runs
    assert holders(lab_file) == ["ml-1"]


def test_a_claim_left_choosing_by_a_killed_run_makes_others_lose_after_the_wait_and_any_run_clears_it(lab_file):
    add_clones(lab_file, ["ml-1", "ml-2"])
    with open_lab(lab_file) as killed:  # the doorway write of a run killed right after it
        xml = killed.inventory().state.domain_xml["ml-1"]
        killed._define(domxml.with_claim(xml, new_claim("ml-1", [str(H100)])), "claim")
    backend = open_lab(lab_file)
    backend._claim_wait_s = 0.2
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("ml-2", (H100,)), default_registry())
    with pytest.raises(Conflict) as caught:
        execute(backend, plan)
    assert "VM 'ml-1'" in caught.value.message and "unfinished" in caught.value.message and caught.value.rolled_back
    assert "a claim left by a stopped run goes away" in caught.value.remedy
    assert holders(lab_file) == []
    # the next run on ml-1 drops the stale claim with its own doorway, and then wins
    again = open_lab(lab_file)
    execute(again, make_plan(again, again.inventory(), AssignmentRequest("ml-1", (H100,)), default_registry()))
    assert holders(lab_file) == ["ml-1"]
    claims, _ = domxml.claims_of(definitions(lab_file)["ml-1"])
    assert [c.choosing for c in claims] == [False]


def test_a_claim_whose_vm_is_undefined_goes_with_it_on_the_test_driver(lab_file):
    """Without a secret driver the claim is inside the VM's own definition (<gpupass:claim> in its <metadata>), so a
    VM undefined after a run on it stopped takes its claim with it: nothing is left to show or clear, and the next
    assign of the GPU does not wait for it. (On a libvirtd the claim is a secret that outlives the VM: status shows
    it on the host, tests/integration/libvirtd/test_kvm_fault_matrix_libvirtd.py.)"""
    from gpupass.backends.kvm.lab.testdriver import remove_domain

    add_clones(lab_file, ["ml-1", "ml-2"])
    with open_lab(lab_file) as killed:  # the doorway write of a run killed right after it
        xml = killed.inventory().state.domain_xml["ml-1"]
        killed._define(domxml.with_claim(xml, new_claim("ml-1", [str(H100)])), "claim")
    with open_lab(lab_file) as before:
        assert [vm.unfinished for vm in before.inventory().vms if vm.name == "ml-1"] != [()]  # shown while defined
    remove_domain(lab_file, "ml-1")  # another admin's `virsh undefine ml-1`
    backend = open_lab(lab_file)
    facts = backend.inventory()
    assert facts.host.unfinished == () and all(vm.unfinished == () for vm in facts.vms)
    backend._claim_wait_s = 0.2  # a claim left choosing would make this run lose after the wait
    execute(backend, make_plan(backend, facts, AssignmentRequest("ml-2", (H100,)), default_registry()))
    assert holders(lab_file) == ["ml-2"]


def test_a_gpu_held_without_a_claim_wins_over_every_claimant(lab_file):
    add_clones(lab_file, ["ml-1", "ml-2"])
    backend = open_lab(lab_file)
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("ml-2", (H100,)), default_registry())
    with open_lab(lab_file) as by_hand:  # someone runs `virsh edit ml-1` and adds the GPU in between
        by_hand.inventory()
        plain = make_plan(by_hand, by_hand.inventory(), AssignmentRequest("ml-1", (H100,)), default_registry())
        by_hand._define(plain.steps[0].payload.new_xml, "by hand")
    with pytest.raises(Conflict) as caught:
        execute(backend, plan)
    assert "held by VM 'ml-1'" in caught.value.message
    assert holders(lab_file) == ["ml-1"]


def test_the_cli_exits_6_for_a_conflict_and_only_one_vm_gets_the_gpu(tmp_path):
    """Separate gpupass processes on the lab host, as admins start them (a few rounds: each costs a start-up)."""
    env = {**os.environ, "GPUPASS_DATA_DIR": str(tmp_path / "data"), "GPUPASS_CONFIG": str(tmp_path / "c.toml")}
    gpupass = GPUPASS
    subprocess.run([*gpupass, "lab", "reset"], env=env, check=True, capture_output=True)
    lab_file = tmp_path / "data" / "lab" / "lab-kvm.xml"
    for _ in range(2):
        subprocess.run([*gpupass, "lab", "reset"], env=env, check=True, capture_output=True)
        add_clones(lab_file, CLONES[:3])
        runs = [subprocess.Popen([*gpupass, "assign", "lab-kvm", vm, str(H100), "--yes", "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for vm in CLONES[:3]]
        codes = {vm: (run.wait(60), run.stdout.read()) for vm, run in zip(CLONES[:3], runs, strict=True)}
        assert sorted(code for code, _ in codes.values())[0] == 0, codes
        assert all(code in (0, 3, 6) for code, _ in codes.values()), codes
        assert len([vm for vm, (code, _) in codes.items() if code == 0]) == 1, codes
        for code, out in codes.values():
            if code == 6:
                assert json.loads(out)["error"] == "conflict"
        assert holders(lab_file) == [vm for vm, (code, _) in codes.items() if code == 0]


def test_status_shows_what_stopped_runs_left_and_how_to_finish(lab_file, tmp_path):
    add_clones(lab_file, ["ml-1", "ml-2", "ml-3"])
    with open_lab(lab_file) as stopped:
        xml = stopped.inventory().state.domain_xml["ml-1"]
        # a run killed after its doorway on ml-1, and two holders of the H100: ml-2 won, ml-3 was killed
        # after writing its (higher-numbered) change and before taking it back
        stopped._define(domxml.with_claim(xml, new_claim("ml-1", [str(H100)])), "claim")
        for vm, number in (("ml-2", 1), ("ml-3", 2)):
            plan = make_plan(stopped, stopped.inventory(), AssignmentRequest(vm, (H100,)), default_registry())
            payload = plan.steps[0].payload
            stopped._define(domxml.with_claim(payload.new_xml, new_claim(vm, [str(H100)]).numbered(number)), vm)
    env = {**os.environ, "GPUPASS_CONFIG": str(tmp_path / "c.toml")}
    status = subprocess.run([*GPUPASS, "status", f"test://{lab_file}", "--json"], env=env, capture_output=True,
                            text=True)
    vms = {vm["name"]: vm["unfinished"] for vm in json.loads(status.stdout)["vms"]}
    assert "stopped before its change was written" in vms["ml-1"][0]
    assert vms["ml-2"] == [] and "VM 'ml-2' holds too" in vms["ml-3"][0]
    assert f"gpupass release HOST ml-3 {H100}" in vms["ml-3"][0]
    text = subprocess.run([*GPUPASS, "status", f"test://{lab_file}"], env=env, capture_output=True, text=True)
    assert "UNFINISHED gpupass operations" in text.stdout and "ml-3:" in text.stdout
    # finishing it as status says: the release runs on the lab file (persisted like the lab host)
    with open_lab(lab_file) as backend:
        from gpupass.core.domain.request import ReleaseRequest

        execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest("ml-3", (H100,)), default_registry()))
    assert holders(lab_file) == ["ml-2"]
