"""The KVM rows of the fault matrix (docs/faults.md) on the writes that TAKE A CHANGE BACK, on a real libvirtd:

* the undo of an assign whose define's reply was lost: the old definition defined again, then the run's claim removed;
* the undo of a release whose define's reply was lost: the GPU claimed again (the release's own claim kept), then the
  old definition defined again;
* the take-back of a run that lost its claim to another run while its define was on the wire: its old definition.

On each write: a reply lost after the daemon carried the call out, and a real gpupass process killed (SIGKILL) with the
call on the wire, which the daemon then carries out. The faults come from the proxy in front of the daemon's socket
(tests/support/libvirt_proxy.py), armed in order, so no sleep decides anything. After each, the host is exactly as it
was (or what is left is shown by `status` with the command that finishes it), the report says so, and the same
command again converges; the GPU is never on two VMs.
"""

# The matrix's fixtures (proxy, host) are imported below and taken as parameters here, which ruff reads as a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import threading
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.errors import Conflict, GpupassError, OperationFailed  # noqa: E402
from gpupass.core.service import execute  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.cli import gpupass  # noqa: E402
from support.libvirt_proxy import (DOMAIN_DEFINE_XML, SECRET_DEFINE_XML, SECRET_UNDEFINE, kill_when_held,  # noqa: E402
                                   start_python)
from test_kvm_backend_libvirtd import inactive_xml  # noqa: E402
from test_kvm_fault_matrix_libvirtd import (_CHILD, GPU, OTHER, THE_GPU, VM, claim_now, exactly, holders,  # noqa: E402,F401
                                            host, plan_for, proxy, run, status)


def through_proxy(proxy, operation):
    """Run `operation` on VM through the proxy, with the faults already armed; -> the error it ended with."""
    with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_for(backend, VM, operation)
        with pytest.raises(GpupassError) as caught:
            execute(backend, plan)
    return caught.value


def child(proxy, operation):
    here = Path(__file__).resolve().parent
    return start_python(_CHILD.format(paths=[str(here), str(here.parents[1])], uri=proxy.uri, vm=VM, operation=operation))


def assert_converged(libvirtd_uri, libvirt_conn, definition, claimed):
    exactly(libvirt_conn, definition, claimed)
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}


# -- the undo of an assign (its define's reply lost, so read back and taken back) ------------------------------------
def test_assign_undo_claim_removal_with_its_reply_lost_is_read_back_and_reported_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, host):
    """Before: the claim removal's lost reply failed the undo ("undo by hand", not rolled back) although the daemon
    had removed the claim. Claim removals find their work done when asked again, so it is asked once more."""
    free, assigned = host
    proxy.drop_reply_to(DOMAIN_DEFINE_XML)
    proxy.drop_reply_to(SECRET_UNDEFINE)
    error = through_proxy(proxy, "assign")
    assert proxy.dropped.is_set() and isinstance(error, OperationFailed)
    assert error.rolled_back is True and "the VM is as it was" in error.message, error.message
    assert_converged(libvirtd_uri, libvirt_conn, free, claimed=False)
    run(libvirtd_uri, VM, "assign")  # the same assign again
    exactly(libvirt_conn, assigned, claimed=True)


@pytest.mark.parametrize("procedure,skip", [(DOMAIN_DEFINE_XML, 1), (SECRET_UNDEFINE, 0)],
                         ids=["undo-define", "undo-claim-removal"])
def test_assign_undo_with_its_client_killed_leaves_the_vm_as_it_was_and_a_claim_left_is_shown(
        libvirtd_uri, libvirt_conn, proxy, host, procedure, skip):
    """Killed with the undo's define on the wire: the daemon defines the old definition, the run's claim stays, and
    status names it with the release that removes it. Killed with the undo's claim removal on the wire: exactly as
    it was."""
    free, assigned = host
    proxy.drop_reply_to(DOMAIN_DEFINE_XML)
    proxy.hold_call_to(procedure, skip=skip)
    kill_when_held(proxy, child(proxy, "assign"))
    if procedure == DOMAIN_DEFINE_XML:
        exactly(libvirt_conn, free, claimed=True)
        note, = status(libvirtd_uri)[VM]
        assert f"`gpupass release HOST {VM} {GPU}` removes the claim" in note
        gpupass("release", libvirtd_uri, VM, "--yes")
    assert_converged(libvirtd_uri, libvirt_conn, free, claimed=False)
    run(libvirtd_uri, VM, "assign")
    exactly(libvirt_conn, assigned, claimed=True)


# -- the undo of a release (its define's reply lost: the GPU claimed again, then the old definition) -----------------
@pytest.mark.parametrize("procedure", [SECRET_DEFINE_XML, DOMAIN_DEFINE_XML], ids=["undo-claim", "undo-define"])
def test_release_undo_with_its_reply_lost_is_read_back_and_reported_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, host, procedure):
    """Before: a lost reply on taking the release back (the claim asked again, or the old definition) failed the
    undo ("undo by hand", not rolled back) although the VM held the GPU again with its claim. The define is read
    back over a new connection, the claim asked once more (it finds the release's own claim, kept)."""
    free, assigned = host
    run(libvirtd_uri, VM, "assign")
    if procedure == DOMAIN_DEFINE_XML:
        proxy.drop_reply_to(DOMAIN_DEFINE_XML, times=2)
    else:
        proxy.drop_reply_to(DOMAIN_DEFINE_XML)
        proxy.drop_reply_to(SECRET_DEFINE_XML)
    error = through_proxy(proxy, "release")
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error.message
    assert "the VM is as it was" in error.message
    assert_converged(libvirtd_uri, libvirt_conn, assigned, claimed=True)
    run(libvirtd_uri, VM, "release")  # the same release again
    exactly(libvirt_conn, free, claimed=False)


@pytest.mark.parametrize("procedure", [SECRET_DEFINE_XML, DOMAIN_DEFINE_XML], ids=["undo-claim", "undo-define"])
def test_release_undo_with_its_client_killed_leaves_the_host_exact_or_shown(
        libvirtd_uri, libvirt_conn, proxy, host, procedure):
    """Killed with the take-back's claim on the wire: the daemon refuses it (the release's own claim is still there),
    so the VM stays released with its claim left, which status shows and the release again removes. Killed with the
    take-back's define on the wire: the daemon defines the old definition: exactly as before the release."""
    free, assigned = host
    run(libvirtd_uri, VM, "assign")
    proxy.drop_reply_to(DOMAIN_DEFINE_XML)
    proxy.hold_call_to(procedure, skip=1 if procedure == DOMAIN_DEFINE_XML else 0)
    kill_when_held(proxy, child(proxy, "release"))
    if procedure == SECRET_DEFINE_XML:
        exactly(libvirt_conn, free, claimed=True)
        note, = status(libvirtd_uri)[VM]
        assert f"`gpupass release HOST {VM} {GPU}` removes the claim (it finishes the release)" in note
        gpupass("release", libvirtd_uri, VM, "--yes")
        assert_converged(libvirtd_uri, libvirt_conn, free, claimed=False)
        return
    assert_converged(libvirtd_uri, libvirt_conn, assigned, claimed=True)
    run(libvirtd_uri, VM, "release")
    exactly(libvirt_conn, free, claimed=False)


# -- the take-back of a run that lost its claim ------------------------------------------------------------------
def lose_the_claim(libvirtd_uri, proxy):
    """With VM's define held at the proxy, another run assigns the GPU to OTHER straight at the daemon: VM's claim is
    stale to it (VM does not hold the GPU), so it takes the claim over and wins."""
    assert proxy.held.wait(60), "the assign's define never reached the proxy"
    run(libvirtd_uri, OTHER, "assign", takeover_s=0.3)


def test_a_losing_run_whose_take_back_reply_is_lost_reads_it_back_and_reports_the_conflict(
        libvirtd_uri, libvirt_conn, proxy, host):
    """Before: the lost reply of the loser's take-back surfaced as a lost connection (exit 1, "as it was"), hiding
    that it lost to another run. Read back over a new connection, it reports the conflict (exit 6) with nothing of
    its change left."""
    free, _ = host
    failure = []

    def assign():
        try:
            with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
                execute(backend, plan_for(backend, VM, "assign"))
        except GpupassError as error:
            failure.append(error)

    proxy.hold_call_to(DOMAIN_DEFINE_XML)
    assigning = threading.Thread(target=assign)
    assigning.start()
    try:
        lose_the_claim(libvirtd_uri, proxy)
        proxy.drop_reply_to(DOMAIN_DEFINE_XML)  # the next define of VM: its take-back
    finally:
        proxy.release()
        assigning.join(60)
    error, = failure
    assert proxy.dropped.is_set()
    assert isinstance(error, Conflict) and error.rolled_back is True, error.message
    assert f"VM '{OTHER}'" in error.message and "nothing of this run's change is left" in error.message
    assert inactive_xml(libvirt_conn, VM) == free
    assert holders(libvirt_conn) == [OTHER] and claim_now(libvirt_conn).vm == OTHER
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}


def test_a_losing_run_killed_with_its_take_back_on_the_wire_leaves_its_vm_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, host):
    free, _ = host
    proxy.hold_call_to(DOMAIN_DEFINE_XML)
    running = child(proxy, "assign")
    try:
        lose_the_claim(libvirtd_uri, proxy)
        proxy.hold_call_to(DOMAIN_DEFINE_XML)  # armed again: the next define of VM, its take-back, is held
        proxy.release()  # the held define goes on; the run sees its claim is not its own and takes its change back
    except BaseException:
        running.kill()
        raise
    kill_when_held(proxy, running)
    assert inactive_xml(libvirt_conn, VM) == free
    assert holders(libvirt_conn) == [OTHER] and claim_now(libvirt_conn).vm == OTHER
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}
