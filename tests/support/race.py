"""Run several processes that plan first and then apply at the same moment: the race a claim must decide.

Each worker is its own process with its own connection, as another admin's gpupass on another machine would be,
and reports its OWN outcome -- never one keyed by the VM, which would hide all but one of several runs on the same
VM: the exit code the CLI would give and the JSON document it would print (`assign --json`: {"applied", "changed"}
on success, the error's own document otherwise).

RacePool: persistent workers started once with 'spawn' (never a fork of the threaded pytest process), a new
connection per worker every round, all released by one barrier: the 100-round claims tests of each platform.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
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


def winners(runs: list[Run]) -> list[str]:
    return [run.name for run in runs if run.kind == "applied"]


def _pool_worker(index: int, tasks: Any, results: Any, barrier: Any, timeout: float) -> None:
    """One admin's gpupass, round after round: plan (prepare: its own new connection, read, plan), wait at the
    barrier with the others, apply, report its own outcome; until told to stop (None)."""
    while True:
        task = tasks.recv()
        if task is None:
            return
        prepare, name = task
        try:
            go = prepare(name)
        except BaseException:  # noqa: BLE001 - a crash is a result the test must see
            barrier.abort()  # the others stop waiting for this one
            results.put((index, Run(name, "crash", 70, {"error": "crash",
                                                        "message": "while planning: " + traceback.format_exc()})))
            continue
        try:
            barrier.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            results.put((index, Run(name, "crash", 70, {"error": "crash", "message": "another worker failed to plan"})))
            continue
        results.put((index, _run(name, go)))


class RacePool:
    """Persistent worker processes for many rounds of a race: each round every worker is handed a name, plans on its
    OWN new connection to the host (as another admin's gpupass on another machine would), waits at one barrier with
    the others and applies at the same moment, and reports its own outcome (Run).

    The workers are started once per pool with the 'spawn' method: a fresh interpreter each, never a fork of the
    threaded pytest process (a fork copies whatever locks its other threads hold at that instant; a fork per round
    deadlocked once). `prepare` must therefore be picklable: a module-level function (or a functools.partial of one)
    that the worker imports by name. It opens the backend, reads and plans, and returns the apply (which closes the
    backend). Nothing is shared between the workers but the barrier: no lock, no cache, no connection."""

    def __init__(self, size: int, timeout: float = 120) -> None:
        self.size, self.timeout = size, timeout
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(size)
        self._results = context.Queue()
        self._pipes = []
        self._workers = []
        for index in range(size):
            receive, send = context.Pipe(duplex=False)
            worker = context.Process(target=_pool_worker, args=(index, receive, self._results, self._barrier, timeout),
                                     name=f"race-worker-{index}", daemon=True)
            worker.start()
            self._pipes.append(send)
            self._workers.append(worker)

    def round(self, prepare: Prepare, names: list[str]) -> list[Run]:
        """One round: worker i runs prepare(names[i]); -> each worker's Run, in the order of `names`."""
        assert len(names) == self.size, f"{len(names)} names for {self.size} workers"
        for pipe, name in zip(self._pipes, names, strict=True):
            pipe.send((prepare, name))
        runs: list[Run | None] = [None] * self.size
        for _ in names:
            try:
                index, run = self._results.get(timeout=self.timeout)
            except queue.Empty:
                alive = [w.name for w in self._workers if w.is_alive()]
                raise AssertionError(f"a race worker did not report within {self.timeout} s (alive: {alive}); "
                                     f"reported: {runs}") from None
            runs[index] = run
        if self._barrier.broken:  # every worker has reported: none waits at it now
            self._barrier.reset()
        return [run for run in runs if run is not None]

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join(5)

    def __enter__(self) -> RacePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
