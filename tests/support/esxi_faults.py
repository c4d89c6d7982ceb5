"""An ESXi write run against a frozen vSphere simulator: the fault rows of docs/faults.md that freeze the endpoint."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable

import pytest

from gpupass.core.errors import OperationFailed
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan


def frozen_before_its_write(sim: Any, target: Any, request: Any, carried_out: Callable[[], bool],
                            write: str = "_send") -> OperationFailed:
    """Plan `request` on a connection with a 1 s timeout and run it with the simulator frozen (SIGSTOP) just before
    its first reconfigure goes (the first call of the backend's method `write`: `_send` for a VM's change,
    `_set_extra` for a write of its intent record alone), then thaw it: gpupass must give up and say the outcome is not known, never "rolled
    back". The thawed simulator then carries out the request that was waiting; the frozen run's session is logged
    out only once `carried_out()` says so (or 10 s passed), since a Logout served first would refuse the waiting
    request as not authenticated."""
    from gpupass.backends.esxi.backend import EsxiBackend

    frozen = EsxiBackend(dataclasses.replace(target, timeout=1.0))
    planned = make_plan(frozen, frozen.inventory(), request, default_registry())
    send_now = getattr(frozen, write)

    def freeze_then_send(*args: Any, **kwargs: Any) -> Any:  # the fault's timing: frozen just before the write
        os.kill(sim.pid, signal.SIGSTOP)
        setattr(frozen, write, send_now)  # once: an undo after it finds the endpoint as frozen as it was
        return send_now(*args, **kwargs)

    setattr(frozen, write, freeze_then_send)
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(frozen, planned)
    finally:
        os.kill(sim.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not carried_out() and time.monotonic() < deadline:
            time.sleep(0.05)
        frozen.close()
    assert caught.value.rolled_back is False
    assert "did not answer within 1s" in caught.value.message and "not known" in caught.value.message
    return caught.value
