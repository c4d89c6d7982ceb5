"""A fault on an undo (docs/faults.md's `... undo` rows for ESXi): a run that rolls back, and a second fault on one of
the undo writes it then sends.

The first fault makes the run roll back cleanly: a reply dropped after vSphere carried the write out (vcsim's
`/gpupass/drop-reply`), which gpupass reads back, finds done, and undoes with the steps before it. The second is put
on one undo write, named by its SOAP method and how many calls of that method come before it in the run: the client
killed with it on the wire (a real `gpupass` process, SIGKILL; the call then carried out, or lost on the way), the
endpoint killed with it on the wire (modelled as restarted with its state: vcsim's `/gpupass/restart`), the endpoint
frozen (SIGSTOP) just before it goes, or its reply dropped. What the test then checks -- the host exactly before or
after, or reported partial and shown by `status`, and the same command again converging -- is its own."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from gpupass.core.errors import GpupassError, OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.plugins import default_registry
from support.cli import killed_with_call_held
from support.esxi_faults import restarted_when_held
from support.frozen_endpoint import frozen_before_its_write


@dataclasses.dataclass
class UndoRun:
    """`request` (the same as `args`, a gpupass command line without --yes and --ca-file) on `sim`, rolled back by the
    reply of call `first` = (SOAP method, calls of it before) dropped; its undo under test is call `undo`."""

    sim: Any
    target: Any
    request: Any
    args: list[str]
    first: tuple[str, int]
    undo: tuple[str, int]

    @property
    def uri(self) -> str:
        return f"esxi://administrator%40vsphere.local@127.0.0.1:{self.sim.port}/Lab"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GPUPASS_PASSWORD": self.sim.password}

    def backend(self, timeout: float | None = None) -> Any:
        from gpupass.backends.esxi.backend import EsxiBackend

        return EsxiBackend(dataclasses.replace(self.target, timeout=timeout) if timeout else self.target)

    def arm_first_fault(self) -> None:
        method, skip = self.first
        self.sim.drop_reply(method, skip=skip)

    def run(self) -> GpupassError | None:
        """The run on a backend of this process: its error (None if it finished)."""
        with self.backend() as backend:
            planned = make_plan(backend, backend.inventory(), self.request, default_registry())
            try:
                execute(backend, planned)
            except GpupassError as error:
                return error
        return None


def killed_with_the_undo_held(run: UndoRun, discard: bool = False) -> None:
    """A real `gpupass` process SIGKILLed while the undo call waits at the simulator; the call then carried out (or
    with `discard` lost on the way)."""
    run.arm_first_fault()
    method, skip = run.undo
    killed_with_call_held(run.sim, method, [*run.args, "--yes"], run.env, skip=skip, discard=discard)


def restarted_when_held_at_the_undo(run: UndoRun, carried: bool) -> GpupassError | None:
    """The endpoint killed (restarted with its state) while the undo call waits there: carried out first, or lost."""
    run.arm_first_fault()
    method, skip = run.undo
    run.sim.hold(method, skip=skip)
    with restarted_when_held(run.sim, method, carried=carried) as restarted:
        error = run.run()
    assert restarted, f"the undo's {method} never reached the simulator"
    return error


def frozen_before_the_undo(run: UndoRun, action: str, nth: int, carried_out: Callable[[], bool]) -> OperationFailed:
    """The endpoint frozen (SIGSTOP) just before the undo goes -- the `nth` (from 1) SOAP method gpupass sends through
    its `_call` for an action starting with `action` -- on a connection with a 1 s timeout, thawed once gpupass gave up
    (support.frozen_endpoint: the outcome must be said not known, never rolled back)."""
    run.arm_first_fault()
    seen: list[str] = []

    def the_undo(what: Any, function: Any = None, *args: Any, **kwargs: Any) -> bool:
        # the write itself, not the poll of its task's info under the same action (EsxiBackend._poll_task)
        if str(what).startswith(action) and "_poll_task" not in str(getattr(function, "__qualname__", "")):
            seen.append(str(what))
            return len(seen) == nth
        return False

    return frozen_before_its_write(run.sim.pid, run.backend(timeout=1.0), run.request, carried_out, sends="_call",
                                   is_the_write=the_undo)


def dropped_reply_of_the_undo(run: UndoRun) -> GpupassError | None:
    """The undo carried out, its reply dropped on the way back."""
    run.arm_first_fault()
    method, skip = run.undo
    if method == run.first[0]:
        # vcsim drops the replies of one method from one count of calls on: the undo's call must come right after
        assert skip == run.first[1] + 1, "the undo must be the next call of the first fault's method"
        run.sim.drop_reply(method, skip=run.first[1])
    else:
        run.sim.drop_reply(method, skip=skip)
    return run.run()
