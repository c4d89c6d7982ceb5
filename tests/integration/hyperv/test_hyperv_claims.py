"""0 double assignments in 100 concurrent rounds on Hyper-V (issue 10), in CI.

Three clients, each in its own thread with its own WinRM session (kept between rounds, as three admins' gpupass
would keep theirs), plan against the WS-Management endpoint, wait at a barrier and assign one GPU at the same
moment. Hyper-V decides by its own rule (a dismounted device is added to one VM only, which the host model
enforces): exactly one wins, the others' scripts undo themselves and the run reports a Conflict (exit 6). Every
tenth round all three assign the same GPU to the same VM: it ends up there once. The multi-process rounds are in
test_hyperv_lost_replies.py; tests/bench/race_claims.py prints the figures.
"""
from __future__ import annotations

import copy
import os
import uuid

from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import HostModel, lab_host
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER
from support.race import race_threads

ROUNDS = int(os.environ.get("GPUPASS_THREAD_RACE_ROUNDS", "100"))
CLONES = ["ml-1", "ml-2", "ml-3"]
GPU = address_map([A100_2_LOC])[A100_2_LOC]


def _model() -> HostModel:
    model = lab_host()
    template = model.vm("ml-train")
    for name in CLONES:
        clone = copy.deepcopy(template)
        clone.name, clone.vm_id = name, str(uuid.uuid4())
        model.vms.append(clone)
    return model


def _reset(model: HostModel, pristine: dict) -> None:
    fresh = HostModel.from_dict(pristine)
    with model.lock:
        model.devices[:], model.vms[:] = fresh.devices, fresh.vms


def test_100_rounds_of_concurrent_assigns_give_one_gpu_to_one_vm(endpoint_factory, record_property):
    model = _model()
    pristine = model.to_dict()
    ep = endpoint_factory(model, "basic")
    backends = {c: HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic",
                                        name=c, password=Secret(PASSWORD))) for c in CLONES}
    registry = plugins.default_registry()
    # The host is put back exactly before every round, so the plan each client makes is the same every round:
    # made once per client and kind of round (reading the whole host costs more than the race itself).
    plans = {}
    for identical in (False, True):
        for client in CLONES:
            backend = backends[client]
            plans[identical, client] = make_plan(backend, backend.inventory(),
                                                 AssignmentRequest("ml-1" if identical else client, (GPU,)), registry)
            assert not plans[identical, client].blocked
    doubles, tally = [], {"applied": 0, "conflict": 0}
    for round_ in range(ROUNDS):
        _reset(model, pristine)
        identical = round_ % 10 == 9
        target = {c: ("ml-1" if identical else c) for c in CLONES}

        def prepare(client, identical=identical):
            return lambda: execute(backends[client], plans[identical, client])

        outcomes = race_threads(prepare, CLONES)
        holders = [v.name for v in model.vms if any(d.assigned_vm == v.name and d.location_path == A100_2_LOC
                                                    for d in model.devices)]
        winners = [c for c, kind, _ in outcomes if kind == "applied"]
        for client, kind, detail in outcomes:
            tally[kind] = tally.get(kind, 0) + 1
            assert kind in ("applied", "conflict"), (round_, client, kind, detail)
            assert kind == "applied" or "rolled_back=True" in detail, (round_, client, detail)
        if len(holders) != 1 or len(winners) != 1 or holders != [target[winners[0]]]:
            doubles.append((round_, holders, outcomes))
        # the losers' VMs are exactly as they were: settings, notes, devices
        after = model.to_dict()["vms"]
        for vm_before, vm_after in zip(pristine["vms"], after, strict=True):
            if vm_before["name"] not in holders:
                assert vm_after == vm_before, (round_, vm_before["name"])
    record_property("hyperv_rounds", f"{ROUNDS} rounds: {tally}")
    print(f"hyperv: {ROUNDS} rounds, {len(doubles)} double/none, outcomes {tally}")
    assert doubles == []
