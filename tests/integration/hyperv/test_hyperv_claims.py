"""0 double assignments in 100 concurrent rounds on Hyper-V (issue 10), in CI.

Three processes (support.race.RacePool: started once with 'spawn'), each opening its own WinRM session every round
as three admins' gpupass on three machines would, read the host and plan against the WS-Management endpoint, wait at
one barrier and assign one GPU at the same moment. Hyper-V decides by its own rule (a dismounted device is added to
one VM only, which the host model enforces): exactly one wins, the others' scripts undo themselves and the run reports a Conflict (exit 6). Every
tenth round all three assign the same GPU to the same VM: it ends up there once, and the two runs that lose report
a conflict. The host model is put back exactly as it was between rounds.
"""
from __future__ import annotations

import copy
import functools
import os
import uuid
from collections import Counter
from typing import Callable

from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import HostModel, lab_host
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER
from support.race import RacePool

ROUNDS = int(os.environ.get("GPUPASS_RACE_ROUNDS", "100"))
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


def assign_in_a_worker(port: int, vm: str) -> Callable[[], object]:
    """One worker's run in a RacePool (module-level: the spawned worker imports it by name): its own new WinRM
    session, a read of the host, a plan; the apply ends the session."""
    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{port}/?transport=basic", name=vm,
                                   password=Secret(PASSWORD)))
    plan = make_plan(backend, backend.inventory(), AssignmentRequest(vm, (GPU,)), plugins.default_registry())
    assert not plan.blocked, plan.findings

    def go() -> object:
        with backend:
            return execute(backend, plan)
    return go


def test_100_rounds_of_concurrent_assigns_give_one_gpu_to_one_vm(endpoint_factory, record_property):
    model = _model()
    pristine = model.to_dict()
    ep = endpoint_factory(model, "basic")
    prepare = functools.partial(assign_in_a_worker, ep.port)
    doubles, tally = [], Counter[str]()
    with RacePool(len(CLONES)) as pool:
        for round_ in range(ROUNDS):
            _reset(model, pristine)
            identical = round_ % 10 == 9
            runs = pool.round(prepare, ["ml-1"] * len(CLONES) if identical else CLONES)
            tally.update(run.kind for run in runs)
            holders = [v.name for v in model.vms if any(d.assigned_vm == v.name and d.location_path == A100_2_LOC
                                                        for d in model.devices)]
            winners = [run.name for run in runs if run.kind == "applied"]
            losers_ok = all(run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True
                            for run in runs if run.kind != "applied")
            # the losers' VMs are exactly as they were: settings, notes, devices
            after = {vm["name"]: vm for vm in model.to_dict()["vms"]}
            if len(holders) != 1 or len(winners) != 1 or holders != winners or not losers_ok or \
                    any(after[vm["name"]] != vm for vm in pristine["vms"] if vm["name"] not in holders):
                doubles.append((round_, holders, runs))
    record_property("hyperv_rounds", f"{ROUNDS} rounds: {dict(tally)}")
    print(f"hyperv: {ROUNDS} rounds x {len(CLONES)} processes, {len(doubles)} wrong, outcomes {dict(tally)}")
    assert doubles == [], "\n".join(map(repr, doubles[:5]))
