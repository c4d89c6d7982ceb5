"""Claims on a REAL libvirtd: several processes, each with its own connection to the daemon, assign one GPU
to different VMs at the same moment; libvirt's defineXML accepts every one of them, so the claim (a libvirt secret
per GPU, backends/kvm/secretclaims.py) must decide. Rounds: GPUPASS_RACE_ROUNDS (100 by default, as in CI)."""

from __future__ import annotations

import functools
import os
from collections import Counter
from typing import Callable

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.race import RacePool  # noqa: E402
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402

ROUNDS = int(os.environ.get("GPUPASS_RACE_ROUNDS", "100"))
VMS = [f"gp-race-{i}" for i in range(1, 4)]


def assign_in_a_worker(uri: str, vm: str) -> Callable[[], object]:
    """One worker's run in a RacePool (module-level: the spawned worker imports it by name): its own new connection
    to the daemon, a read, a plan; the apply closes the connection."""
    backend = KvmBackend(Target(uri=uri, name="session"))
    plan = make_plan(backend, with_gpus(backend.inventory(), T4), AssignmentRequest(vm, (T4.address,)),
                     default_registry())
    assert not plan.blocked, plan.findings

    def go() -> object:
        with backend:
            return execute(backend, plan)
    return go


def test_100_rounds_of_concurrent_assigns_on_the_daemon(libvirtd_uri, libvirt_conn):
    """0 double assignments in 100 concurrent rounds (issue 10), in CI: three processes (support.race.RacePool,
    started once), each opening its own connection to the daemon every round, plan, wait at one barrier and assign
    the T4 at the same moment. Exactly one wins; the others exit 6 with their own change undone. Every tenth round
    all three give it to the same VM: it holds it once. Between rounds the winner gives it back through gpupass's
    own release (its claim, a libvirt secret, goes with it)."""
    before = {vm: define(libvirt_conn, q35(vm)) for vm in VMS}
    prepare = functools.partial(assign_in_a_worker, libvirtd_uri)
    tally: Counter[str] = Counter()
    wrong = []
    with KvmBackend(Target(uri=libvirtd_uri, name="reset")) as admin, RacePool(len(VMS)) as pool:
        for round_ in range(ROUNDS):
            for vm in VMS:
                if "bus='0x41'" in inactive_xml(libvirt_conn, vm):   # the last round's winner gives it back
                    execute(admin, make_plan(admin, with_gpus(admin.inventory(), T4), ReleaseRequest(vm),
                                             default_registry()))
                if inactive_xml(libvirt_conn, vm) != before[vm]:
                    libvirt_conn.defineXML(before[vm])
            identical = round_ % 10 == 9
            runs = pool.round(prepare, [VMS[0]] * len(VMS) if identical else VMS)
            tally.update(run.kind for run in runs)
            held = {vm: inactive_xml(libvirt_conn, vm).count("bus='0x41'") for vm in VMS}
            holders = [vm for vm, count in held.items() if count]
            winners = [run.name for run in runs if run.kind == "applied"]
            # the others: a conflict undone (exit 6) or, identical and planned after the winner's change, nothing to do
            others_ok = all(run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True
                            or identical and run.kind == "nothing-to-do" for run in runs if run.kind != "applied")
            if sum(held.values()) != 1 or len(winners) != 1 or holders != winners[:1] or not others_ok or \
                    any(inactive_xml(libvirt_conn, vm) != before[vm] for vm in VMS if vm not in holders):
                wrong.append((round_, held, runs))
    print(f"kvm (libvirtd): {ROUNDS} rounds x {len(VMS)} processes, {len(wrong)} wrong, outcomes {dict(tally)}")
    assert wrong == [], "\n".join(map(repr, wrong[:5]))
