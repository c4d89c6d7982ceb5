"""An ESXi write run against a frozen vSphere simulator, or against one killed and started again with the call on the
wire: the fault rows of docs/faults.md that freeze or kill the endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any, Callable, Iterator

from gpupass.core.errors import OperationFailed
from support.frozen_endpoint import frozen_before_its_write as _frozen


def frozen_before_its_write(sim: Any, target: Any, request: Any, carried_out: Callable[[], bool],
                            write: str = "_send", action: str = "") -> OperationFailed:
    """Plan `request` on a connection with a 1 s timeout and run it with the simulator frozen (SIGSTOP) just before
    its first reconfigure goes (the first call of the backend's method `write`: `_send` for a VM's change,
    `_set_extra` for a write of its intent record alone; with `action`, the first SOAP call made through `_call` for
    an action starting so, e.g. "enabling passthrough" for UpdatePassthruConfig), then thaw it: gpupass must give up
    and say the outcome is not known, never "rolled back". The thawed simulator then carries out the request that was
    waiting; the frozen run's session is logged out (at close) only once `carried_out()` says so (or 10 s passed),
    since a Logout served first would refuse the waiting request as not authenticated."""
    from gpupass.backends.esxi.backend import EsxiBackend

    backend = EsxiBackend(dataclasses.replace(target, timeout=1.0))
    if action:
        error = _frozen(sim.pid, backend, request, carried_out, sends="_call",
                        is_the_write=lambda what, *args, **kwargs: str(what).startswith(action))
    else:
        error = _frozen(sim.pid, backend, request, carried_out, sends=write)
    assert "did not answer within 1s" in error.message
    return error


@contextlib.contextmanager
def restarted_when_held(sim: Any, call: str, *, carried: bool) -> Iterator[list[bool]]:
    """The endpoint killed with `call` on the wire, in the model docs/faults.md names: while the block runs, once
    `call` waits at the simulator's hold (armed by the caller: `sim.hold(call, skip=N)`), the simulator is restarted
    at once with its inventory (vcsim's `/gpupass/restart`): the call lost with the process, or (`carried`) carried
    out before it died; its connection closed unanswered, every session gone. Yields a list that holds True once
    the restart happened; the block asserts it."""
    restarted: list[bool] = []
    stop = threading.Event()

    def restart_when_held() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if sim.held() == call:
                    sim.restart(carried=carried)
                    restarted.append(True)
                    return
            except Exception:  # noqa: BLE001 - the control endpoint between two polls
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=restart_when_held, daemon=True)
    watcher.start()
    try:
        yield restarted
    finally:
        stop.set()
        watcher.join(65)
        if not restarted:
            sim.release()  # a hold never reached: disarmed
