"""Run several processes that plan first and then apply at the same moment: the race a claim must decide.

Each worker runs in its own forked process (its own connection, as another admin's gpupass would) and
returns what its run ended with: "applied", or the error kind ("conflict", "preflight-failed", ...).
"""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Callable

from gpupass.core.errors import GpupassError

Prepare = Callable[[str], Callable[[], object]]


def _worker(prepare: Prepare, vm: str, barrier, results) -> None:
    try:
        go = prepare(vm)  # connect, read and plan: everything before the first write
        barrier.wait(timeout=60)
        go()
        results.put((vm, "applied", ""))
    except GpupassError as error:
        results.put((vm, error.kind, f"{error.message} rolled_back={getattr(error, 'rolled_back', None)}"))
    except BaseException:  # noqa: BLE001 - a crash is a result the test must see
        results.put((vm, "crash", traceback.format_exc()))


def race(prepare: Prepare, vms: list[str], timeout: float = 120) -> dict[str, tuple[str, str]]:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(vms)), context.Queue()
    workers = [context.Process(target=_worker, args=(prepare, vm, barrier, results)) for vm in vms]
    for worker in workers:
        worker.start()
    outcomes = {}
    for _ in vms:
        vm, kind, detail = results.get(timeout=timeout)
        outcomes[vm] = (kind, detail)
    for worker in workers:
        worker.join(timeout)
    return outcomes
