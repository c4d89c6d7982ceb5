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


def _outcome(go: Callable[[], object]) -> tuple[str, str]:
    try:
        go()
        return "applied", ""
    except GpupassError as error:
        return error.kind, f"{error.message} rolled_back={getattr(error, 'rolled_back', None)}"
    except BaseException:  # noqa: BLE001 - a crash is a result the test must see
        return "crash", traceback.format_exc()


def race_threads(prepare: Callable[[str], Callable[[], object]], clients: list[str],
                 timeout: float = 60) -> list[tuple[str, str, str]]:
    """One round with each client in its own thread: every thread plans (prepare: its own connection, read,
    plan), all wait at a barrier, then all apply at once. Returns (client, kind, detail) per client.

    Threads let a test run many rounds cheaply (no process start, connections kept between rounds); the host
    sees the same thing as from processes: separate connections writing at the same moment. The process
    variant above stays the proof that nothing in one process (a lock, a cache) decides."""
    import threading

    barrier = threading.Barrier(len(clients))
    results: list[tuple[str, str, str] | None] = [None] * len(clients)

    def run(index: int, client: str) -> None:
        try:
            go = prepare(client)
        except BaseException:  # noqa: BLE001
            barrier.abort()
            results[index] = (client, "crash", "while planning: " + traceback.format_exc())
            return
        try:
            barrier.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            results[index] = (client, "crash", "another client failed to plan")
            return
        results[index] = (client, *_outcome(go))

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return [r if r is not None else (c, "crash", "did not finish in time") for r, c in zip(results, clients, strict=True)]
