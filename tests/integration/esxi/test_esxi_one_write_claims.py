"""One-write claims on vSphere (core/domain/claims.py, decide_written), on the simulator with real pyvmomi:
the two orders in which two runs can meet when one of them wrote and read before the other wrote."""

from __future__ import annotations

import time

import pytest

from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Conflict
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan  # noqa: E402
from tests.integration.esxi.test_esxi_claims import config_with_clones, holders, open_backend  # noqa: E402


def _planned(sim, vm):
    backend = open_backend(sim)
    return backend, plan(backend, AssignmentRequest(vm, (A100_ACTIVE,)))


def test_a_run_that_writes_after_another_has_won_loses_at_once(fresh_vcsim):
    sim = fresh_vcsim(config_with_clones(), username=USER)
    late, late_plan = _planned(sim, "ml-1")  # planned before the other run wrote: it saw no claim
    early, early_plan = _planned(sim, "ml-2")
    with open_backend(sim) as reader:
        before = reader.inventory().find_vm("ml-1")
    execute(early, early_plan)
    late._claim_wait_s = 30.0
    started = time.monotonic()
    with pytest.raises(Conflict) as caught:
        execute(late, late_plan)
    assert time.monotonic() - started < 5  # its claim comes after the winner's: no wait
    assert caught.value.rolled_back and "VM 'ml-2' claimed" in caught.value.message
    assert holders(sim) == ["ml-2"]
    with open_backend(sim) as reader:
        assert reader.inventory().find_vm("ml-1") == before  # its change and its claim taken back
    early.close()
    late.close()


def test_a_run_whose_clock_is_behind_waits_for_the_winner_to_give_up_then_loses(fresh_vcsim, monkeypatch):
    """Its claim's number (its clock) comes before the winner's, so from what it reads it cannot tell a
    winner from a run that will see it and take its change back: it waits _claim_wait_s, then loses."""
    sim = fresh_vcsim(config_with_clones(), username=USER)
    late, late_plan = _planned(sim, "ml-1")
    early, early_plan = _planned(sim, "ml-2")
    execute(early, early_plan)
    late._claim_wait_s = 1.0
    monkeypatch.setattr(time, "time_ns", lambda: 1_000)  # a clock far behind the other machine's
    started = time.monotonic()
    with pytest.raises(Conflict) as caught:
        execute(late, late_plan)
    monkeypatch.undo()
    assert time.monotonic() - started >= 1.0
    assert caught.value.rolled_back and "VM 'ml-2' holds the same GPU" in caught.value.message
    assert holders(sim) == ["ml-2"]
    early.close()
    late.close()
