"""A write run against a frozen endpoint process: the fault rows of docs/faults.md that freeze the host's API server
(SIGSTOP) just before gpupass's write goes, then thaw it (SIGCONT) after gpupass gave up. One function for every
backend; tests/support/esxi_faults.py and hyperv_faults.py say where each backend's write leaves.

`freeze(pid)` is the freeze itself: kill(SIGSTOP) returning does NOT mean the process has stopped. Linux stops a
multi-threaded process by a "group stop": the thread that dequeues SIGSTOP sets JOBCTL_STOP_PENDING on every other
thread and wakes it (signal_wake_up), and each thread stops itself only when it next runs (torvalds/linux
kernel/signal.c, do_signal_stop). Until then the endpoint's other threads run on -- a Go vcsim's netpoller, a
libvirtd worker -- and can read and answer a request sent right after kill() returned: measured here, 3 of 40
requests sent on a kept-alive connection to vcsim straight after kill(SIGSTOP) were answered, and the frozen-endpoint
tests failed with "DID NOT RAISE" under load. So freeze() waits until every thread of the process shows state T
("stopped", proc(5) /proc/PID/task/TID/stat; torvalds/linux fs/proc/array.c task_state_array)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from gpupass.core.errors import OperationFailed
from gpupass.core.plugins import default_registry
from gpupass.core.ports import Backend
from gpupass.core.service import execute, make_plan


def running_threads(pid: int) -> list[str]:
    """The threads of process `pid` that are not stopped, as "TID:STATE" (an empty list: all stopped)."""
    running = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        state = text[text.rindex(")") + 2]  # the field after "(comm)", which may itself hold spaces or ')'
        if state not in "TtZX":  # stopped, or a thread that has ended
            running.append(f"{stat.parent.name}:{state}")
    return running


def freeze(pid: int, within: float = 10.0) -> None:
    """SIGSTOP process `pid` and return once every one of its threads has stopped (see the module's docstring)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + within
    while running := running_threads(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} was sent SIGSTOP but threads {running} still run after {within:g}s")
        time.sleep(0.001)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def frozen_before_its_write(pid: int, backend: Backend, request: Any, carried_out: Callable[[], bool], *,
                            sends: str, is_the_write: Callable[..., bool] = lambda *args: True,
                            sent_after_thaw: Sequence[str] = ()) -> OperationFailed:
    """Plan `request` on `backend` (opened with a short timeout) and run it with the endpoint process `pid` frozen just
    before the first call of the backend's method `sends` for which `is_the_write(*args)` is true; thaw it once
    gpupass has given up. gpupass must say the outcome is not known, never "rolled back"; the thawed endpoint then
    carries out the request that was waiting, which `carried_out()` tells (waited for up to 10 s).

    `sent_after_thaw`: backend methods that end the frozen run's session (ESXi's Logout at close, Hyper-V's deletion of
    its remote shell after a failed command) are held back until the write was carried out -- served first, they
    would refuse or drop the waiting request (a different fault: the write never runs) -- and then sent, as a network
    that delivers them late would."""
    planned = make_plan(backend, backend.inventory(), request, default_registry())
    send_now = getattr(backend, sends)
    frozen: list[bool] = []

    def freeze_then_send(*args: Any, **kwargs: Any) -> Any:  # the fault's timing: frozen just before the write
        if not frozen and is_the_write(*args, **kwargs):
            freeze(pid)
            frozen.append(True)
        return send_now(*args, **kwargs)

    held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    for name in sent_after_thaw:
        def later(*args: Any, _now: Callable[..., Any] = getattr(backend, name), **kwargs: Any) -> None:
            held.append((lambda: _now(*args, **kwargs), args))
        setattr(backend, name, later)
    setattr(backend, sends, freeze_then_send)
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, planned)
    finally:
        thaw(pid)
        deadline = time.monotonic() + 10
        while not carried_out() and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in (sends, *sent_after_thaw):
            delattr(backend, name)                       # the backend's own methods again
        for send, _ in held:
            send()
        backend.close()
    assert frozen, f"the backend never called {sends} for the write"
    assert caught.value.rolled_back is False, caught.value.message
    assert "did not answer within" in caught.value.message and "not known" in caught.value.message, caught.value.message
    return caught.value
