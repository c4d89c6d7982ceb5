"""A reply lost after the host ran the script (issue 10 item 2): gpupass reads the host again and reports
what is there, never an assumed rollback; the VM's previous settings are in its notes, written by the same
script, so the undo (or a later release) restores them."""
from __future__ import annotations


import pytest

from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, rtx_host


@pytest.fixture
def hv(endpoint_factory, tmp_path):
    ep = endpoint_factory(rtx_host(), "basic")
    target = Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv-test",
                    password=Secret(PASSWORD), options={"state_file": str(tmp_path / "settings.json")})
    return HypervBackend(target), ep


def test_a_lost_reply_after_the_assign_ran_is_read_back_and_undone(hv):
    backend, ep = hv
    registry = plugins.default_registry()
    facts = backend.inventory()
    rtx = next(g for g in facts.gpus if "4090" in g.function.name)
    before = ep.model.to_dict()
    ep.drop_next_receive()
    with pytest.raises(OperationFailed) as caught:
        execute(backend, make_plan(backend, facts, AssignmentRequest("ml-train", (rtx.address,)), registry))
    # the host had done it all; gpupass saw that and undid it, settings included
    assert caught.value.rolled_back is True and "the failed step had gone through and was undone" in caught.value.message
    assert ep.model.to_dict() == before


def test_a_lost_reply_with_an_unreadable_host_says_the_outcome_is_unknown(hv):
    backend, ep = hv
    registry = plugins.default_registry()
    facts = backend.inventory()
    rtx = next(g for g in facts.gpus if "4090" in g.function.name)
    before = ep.model.to_dict()
    ep.drop_next_receive(count=2)  # the assign's reply, then the read-back's
    with pytest.raises(OperationFailed) as caught:
        execute(backend, make_plan(backend, facts, AssignmentRequest("ml-train", (rtx.address,)), registry))
    assert caught.value.rolled_back is False and "could not be read again" in caught.value.message
    # the host finished the assignment; the settings from before are in the VM's notes, written by the same
    # Set-VM, so a later release gives the host and the VM back exactly as they were
    ep.clear_faults()
    assert rtx.address in backend.inventory().find_vm("ml-train").assigned
    execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest("ml-train"), registry))
    assert ep.model.to_dict() == before


# -- a lost reply on the undo too: read back, not "undo by hand" ----------------------------------------------------
ASSIGN_SCRIPT = "Add-VMAssignableDevice -LocationPath $p -VM $v"     # what tells the assign script from the others
RELEASE_SCRIPT = "Remove-VMAssignableDevice -VMAssignableDevice"     # ... and the release script


def losing_replies(backend, ep, markers):
    """Drop the reply of every script holding one of `markers` after the host ran it; returns what was lost."""
    sent = backend._run_ps
    lost: list[str] = []

    def send(script, action):
        if any(m in script for m in markers):
            lost.append(action)
            ep.drop_next_receive()
        return sent(script, action)

    backend._run_ps = send
    return lost


@pytest.mark.parametrize("operation", ["assign", "release"])
def test_a_lost_reply_on_the_step_and_on_its_undo_is_read_back_as_undone(hv, operation):
    """The assign (or release) runs and its reply is lost; read back, it went through, so gpupass undoes it -- the
    release (or assign) script -- and that reply is lost too. The host is read again: the undo went through, so it is
    reported rolled back, exactly as it was; before, this was "could not be undone: undo by hand"."""
    backend, ep = hv
    registry = plugins.default_registry()
    rtx = next(g for g in backend.inventory().gpus if "4090" in g.function.name)
    if operation == "release":
        execute(backend, make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (rtx.address,)), registry))
    before = ep.model.to_dict()
    request = AssignmentRequest("ml-train", (rtx.address,)) if operation == "assign" else ReleaseRequest("ml-train")
    plan = make_plan(backend, backend.inventory(), request, registry)
    lost = losing_replies(backend, ep, (ASSIGN_SCRIPT, RELEASE_SCRIPT))
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert len(lost) == 2, lost                                        # the step's reply and its undo's
    assert caught.value.rolled_back is True and "undo by hand" not in caught.value.message, caught.value.message
    assert ep.model.to_dict() == before
    del backend._run_ps
    assert all(vm.unfinished == () for vm in backend.inventory().vms)
    again = make_plan(backend, backend.inventory(), request, registry)
    execute(backend, again)                                           # the same command again converges
    assert make_plan(backend, backend.inventory(), request, registry).nothing_to_do


def test_a_lost_undo_reply_with_an_unreadable_host_is_still_reported_not_undone(hv):
    """The undo's reply lost and every read after it too: gpupass cannot tell, so the undo is reported not made (the
    host here did make it: the remedy's `status` shows the VM as it was)."""
    backend, ep = hv
    registry = plugins.default_registry()
    rtx = next(g for g in backend.inventory().gpus if "4090" in g.function.name)
    before = ep.model.to_dict()
    plan = make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (rtx.address,)), registry)
    sent = backend._run_ps
    undoing: list[str] = []

    def send(script, action):
        if ASSIGN_SCRIPT in script or RELEASE_SCRIPT in script or undoing:
            ep.drop_next_receive()
        if RELEASE_SCRIPT in script:
            undoing.append(action)                   # from the undo on, nothing gets through
        return sent(script, action)

    backend._run_ps = send
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    del backend._run_ps
    assert undoing and caught.value.rolled_back is False and "could not be undone" in caught.value.message
    assert ep.model.to_dict() == before
