"""Claims on a REAL libvirtd: several processes, each with its own connection to the daemon, assign one GPU
to different VMs at the same moment; libvirt's defineXML accepts every one of them, so the claim in each
domain's metadata must decide. Rounds: GPUPASS_RACE_ROUNDS (tests/bench/race_claims.py runs 100)."""

from __future__ import annotations

import os

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.race import race  # noqa: E402
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402

ROUNDS = int(os.environ.get("GPUPASS_RACE_ROUNDS", "3"))
VMS = [f"gp-race-{i}" for i in range(1, 4)]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_of_concurrent_assigns_on_the_daemon_exactly_one_wins(libvirtd_uri, libvirt_conn, round_):
    before = {vm: define(libvirt_conn, q35(vm)) for vm in VMS}

    def prepare(vm):
        backend = KvmBackend(Target(uri=libvirtd_uri, name="session"))
        plan = make_plan(backend, with_gpus(backend.inventory(), T4), AssignmentRequest(vm, (T4.address,)),
                         default_registry())
        assert not plan.blocked
        return lambda: execute(backend, plan)

    runs = race(prepare, VMS)
    winners = [run.name for run in runs if run.kind == "applied"]
    assert len(winners) == 1, runs
    for run in runs:
        held = "bus='0x41'" in inactive_xml(libvirt_conn, run.name)
        assert held == (run.name in winners), (run, runs)
        if run.name not in winners:
            assert run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True, runs
            assert inactive_xml(libvirt_conn, run.name) == before[run.name]


THREAD_ROUNDS = int(os.environ.get("GPUPASS_THREAD_RACE_ROUNDS", "100"))


def test_100_rounds_of_concurrent_assigns_on_the_daemon(libvirtd_uri, libvirt_conn):
    """0 double assignments in 100 concurrent rounds (issue 10), in CI: three clients, each in its own thread with
    its own connection to the daemon (kept between rounds), plan, wait at a barrier and assign at once. Every
    tenth round all three give the GPU to the same VM: it holds it once. The winner releases it between rounds."""
    from support.race import race_threads

    before = {vm: define(libvirt_conn, q35(vm)) for vm in VMS}
    backends = {vm: KvmBackend(Target(uri=libvirtd_uri, name=vm)) for vm in VMS}
    tally: dict[str, int] = {}
    wrong = []
    try:
        for round_ in range(THREAD_ROUNDS):
            for vm in VMS:
                if "bus='0x41'" in inactive_xml(libvirt_conn, vm):   # the last round's winner gives it back
                    backend = backends[vm]                            # (its claim, a libvirt secret, goes too)
                    execute(backend, make_plan(backend, with_gpus(backend.inventory(), T4), ReleaseRequest(vm),
                                               default_registry()))
                if inactive_xml(libvirt_conn, vm) != before[vm]:
                    libvirt_conn.defineXML(before[vm])
            identical = round_ % 10 == 9
            target = {vm: (VMS[0] if identical else vm) for vm in VMS}

            def prepare(client, target=target):
                backend = backends[client]
                plan = make_plan(backend, with_gpus(backend.inventory(), T4),
                                 AssignmentRequest(target[client], (T4.address,)), default_registry())
                assert not plan.blocked
                return lambda: execute(backend, plan)

            outcomes = race_threads(prepare, VMS)
            held = {vm: inactive_xml(libvirt_conn, vm).count("bus='0x41'") for vm in VMS}
            winners = [c for c, kind, _ in outcomes if kind == "applied"]
            for client, kind, detail in outcomes:
                tally[kind] = tally.get(kind, 0) + 1
                assert kind in ("applied", "conflict"), (round_, client, kind, detail)
                assert kind == "applied" or "rolled_back=True" in detail, (round_, client, detail)
            holders = [vm for vm, count in held.items() if count]
            if sum(held.values()) != 1 or not winners or any(target[w] != holders[0] for w in winners) or \
                    (not identical and len(winners) != 1):
                wrong.append((round_, held, outcomes))
            for vm in VMS:
                if vm not in holders:
                    assert inactive_xml(libvirt_conn, vm) == before[vm], (round_, vm)
    finally:
        for backend in backends.values():
            backend.close()
    print(f"kvm (libvirtd): {THREAD_ROUNDS} rounds, {len(wrong)} double/none, outcomes {tally}")
    assert wrong == []
