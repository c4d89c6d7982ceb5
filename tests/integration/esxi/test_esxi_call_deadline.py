"""Each SOAP call bounded as a whole by the host's timeout (backends/esxi/deadline.py), pyVmomi's and the read path's:
vcsim sends an answer one byte every 0.2 s (`/gpupass/drip`), so each socket read gets its byte well within a 1 s
timeout and only a bound on the whole call ends it. Without that bound these calls would last minutes (an inventory
answer of kilobytes at five bytes a second); each runs in a thread here, so a regression fails the test instead of
hanging it (the simulator is stopped first, which closes the connection the thread waits on)."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import ConnectionFailed, OperationFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402

DRIP_S = 0.2  # a byte every 0.2 s: within a 1 s socket timeout, every time
TIMEOUT_S = 1.0


def _ended_within(sim: Any, seconds: float, call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run `call` in a thread: (what it raised, how long it took). Not ended by `seconds`: the simulator is stopped
    (the call's connection closes, so the thread ends: closing the connection from here would wait on the reader's
    lock), and the test fails."""
    outcome: list[BaseException | None] = []
    began = time.monotonic()

    def run() -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        sim.stop()
        worker.join(30)
        pytest.fail(f"the call was still going after {seconds:g}s: not bounded as a whole")
    return outcome[0], time.monotonic() - began


def _quick(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(dataclasses.replace(target(sim), timeout=TIMEOUT_S))


def test_an_inventory_answer_dripped_byte_by_byte_ends_at_the_hosts_timeout_naming_the_host(fresh_vcsim):
    """The read path (wire.Session): the inventory's RetrievePropertiesEx answered a byte every 0.2 s ends after the
    host's 1 s with an error naming the host and the fix; the next call logs in again and reads the inventory."""
    sim = fresh_vcsim(username=USER)
    backend = _quick(sim)
    try:
        backend.inventory()                                  # logged in; the next call is the inventory's read
        sim.drip("RetrievePropertiesEx", DRIP_S)
        error, took = _ended_within(sim, 15, backend.inventory)
        assert isinstance(error, ConnectionFailed), error
        assert took < TIMEOUT_S + 2, took                    # the call's 1 s, and a little for the test's own work
        assert "127.0.0.1 was still sending its answer when the call's 1s ran out" in error.message, error.message
        assert "what that request did there is not known" in error.message, error.message
        assert "raise `timeout` in its [hosts.NAME] table" in error.remedy, error.remedy
        assert backend.inventory().find_vm("ml-train") is not None   # the host answers again: read as usual
    finally:
        backend.close()


def test_a_reconfigure_answer_dripped_byte_by_byte_ends_at_the_hosts_timeout_and_is_read_back(fresh_vcsim):
    """pyVmomi's path (a write): vCenter carried out the assign's ReconfigVM_Task but its answer comes a byte every
    0.2 s. The call ends after the host's 1 s; gpupass reads the VM back, finds the change applied, takes it back and
    says so, naming the host: exactly as before, and the same assign again goes through."""
    sim = fresh_vcsim(username=USER)
    backend = _quick(sim)
    try:
        before = backend.inventory().find_vm("ml-train")
        assign = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        sim.drip("ReconfigVM_Task", DRIP_S)
        error, took = _ended_within(sim, 15, lambda: execute(backend, assign))
        assert isinstance(error, OperationFailed), error
        assert took < 3 * TIMEOUT_S + 2, took                # the write's 1 s, then the read-back and the take-back
        assert "127.0.0.1 was still sending its answer when the call's 1s ran out" in error.message, error.message
        assert error.rolled_back is True, error.message
        assert "what vSphere had applied of it was taken back" in error.message, error.message
        assert backend.inventory().find_vm("ml-train") == before
        execute(backend, plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,))))
        assert backend.inventory().find_vm("ml-train").assigned == (A100_ACTIVE,)
    finally:
        backend.close()


def test_calls_that_each_end_in_time_are_never_cut_however_long_the_connection_lives(fresh_vcsim):
    """The deadline is per call, not per connection: on one kept-alive connection with a 1 s timeout, calls spread
    over more than three seconds all succeed; and an answer dripped fast enough to end within the second (the login's
    RetrieveServiceContent, a couple of kilobytes) does too."""
    sim = fresh_vcsim(username=USER)
    backend = _quick(sim)
    try:
        began = time.monotonic()
        while time.monotonic() - began < 3 * TIMEOUT_S:
            assert backend.inventory().find_vm("ml-train") is not None
            time.sleep(0.4)
    finally:
        backend.close()
    sim.drip("RetrieveServiceContent", 0.05, size=400)    # some 4 KiB in 0.6 s
    again = _quick(sim)
    try:
        assert again.inventory().find_vm("ml-train") is not None
    finally:
        again.close()
