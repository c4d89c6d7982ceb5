"""Run several processes that plan first and then apply at the same moment: the race a claim must decide.

Each worker runs in its own forked process (its own connection, as another admin's gpupass would) and reports
its OWN outcome -- never one keyed by the VM, which would hide all but one of several runs on the same VM: the
exit code the CLI would give and the JSON document it would print (`assign --json`: {"applied", "changed"} on
success, the error's own document otherwise).
"""

from __future__ import annotations

import multiprocessing
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from gpupass.core.errors import GpupassError

Prepare = Callable[[str], Callable[[], object]]


@dataclass(frozen=True)
class Run:
    """What one process's run ended with, as the CLI would report it."""

    name: str           # what prepare() was given (a VM name; several runs may share one)
    kind: str           # "applied", "nothing-to-do", an error's kind ("conflict", ...), or "crash"
    exit_code: int      # the CLI's exit code for it (0 for applied and nothing-to-do; 70 for a crash)
    document: dict[str, Any] = field(default_factory=dict)  # the `--json` document

    @property
    def detail(self) -> str:
        """The message and, for a failed write, whether it was rolled back (for assertion messages)."""
        return f"{self.document.get('message', '')} rolled_back={self.document.get('rolled_back')}"

    @property
    def rolled_back(self) -> bool | None:
        return self.document.get("rolled_back")


def _run(name: str, go: Callable[[], object]) -> Run:
    try:
        outcome = go()
    except GpupassError as error:
        return Run(name, error.kind, error.exit_code, error.to_dict())
    except BaseException:  # noqa: BLE001 - a crash is a result the test must see
        return Run(name, "crash", 70, {"error": "crash", "message": traceback.format_exc()})
    changed = bool(getattr(outcome, "steps", True))  # execute() applies no step for a plan with nothing to do
    return Run(name, "applied" if changed else "nothing-to-do", 0, {"applied": changed, "changed": changed})


def _worker(prepare: Prepare, index: int, name: str, barrier, results) -> None:
    try:
        go = prepare(name)  # connect, read and plan: everything before the first write
        barrier.wait(timeout=60)
    except BaseException:  # noqa: BLE001
        barrier.abort()  # the others stop waiting for this one
        results.put((index, Run(name, "crash", 70, {"error": "crash",
                                                    "message": "while planning: " + traceback.format_exc()})))
        return
    results.put((index, _run(name, go)))


def race(prepare: Prepare, names: list[str], timeout: float = 120) -> list[Run]:
    """One process per name (a name may repeat: each run is reported on its own), in the order given."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(names)), context.Queue()
    workers = [context.Process(target=_worker, args=(prepare, i, name, barrier, results))
               for i, name in enumerate(names)]
    for worker in workers:
        worker.start()
    runs: list[Run | None] = [None] * len(names)
    for _ in names:
        index, run = results.get(timeout=timeout)
        runs[index] = run
    for worker in workers:
        worker.join(timeout)
    return [run for run in runs if run is not None]


def winners(runs: list[Run]) -> list[str]:
    return [run.name for run in runs if run.kind == "applied"]


def _outcome(go: Callable[[], object]) -> tuple[str, str]:
    """(kind, detail) for race_threads, whose rounds count a run that ended without error as "applied"."""
    run = _run("", go)
    if run.kind == "crash":
        return "crash", run.document["message"]
    return ("applied" if run.exit_code == 0 else run.kind), run.detail


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
