"""An ESXi write run against a frozen vSphere simulator: the fault rows of docs/faults.md that freeze the endpoint."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

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
