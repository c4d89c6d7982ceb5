"""Claims on a REAL libvirtd: several processes, each with its own connection to the daemon, assign one GPU
to different VMs at the same moment; libvirt's defineXML accepts every one of them, so the claim in each
domain's metadata must decide. Rounds: GPUPASS_RACE_ROUNDS (tests/bench/race_claims.py runs 100)."""

from __future__ import annotations

import os

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest  # noqa: E402
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

    outcomes = race(prepare, VMS)
    winners = [vm for vm, (kind, _) in outcomes.items() if kind == "applied"]
    assert len(winners) == 1, outcomes
    for vm in VMS:
        held = "bus='0x41'" in inactive_xml(libvirt_conn, vm)
        assert held == (vm in winners), (vm, outcomes)
        if vm not in winners:
            assert outcomes[vm][0] == "conflict" and "rolled_back=True" in outcomes[vm][1]
            assert inactive_xml(libvirt_conn, vm) == before[vm]
