"""The KVM rows of the fault matrix (docs/faults.md) on a REAL libvirtd: for each write of an assign and of a release
-- the GPU's claim (a libvirt secret, secretDefineXML), the VM's definition (defineXML, which carries the restore
record), and the claim's removal (virSecretUndefine) -- a reply lost after the daemon carried the call out, and a
real gpupass process killed (SIGKILL) while its call is on the wire, which the daemon then carries out.

The faults come from a proxy in front of the daemon's socket (tests/support/libvirt_proxy.py) that loses the
reply to one call, or holds one call until the test lets it through: no sleeps decide anything here.

After each, the host is exactly before or exactly after (VM definition and claim), or `status` names what a run
left with the command that finishes it; running the command again converges; the GPU is never on two VMs.
(Hot-plug and creating a mediated device: test_kvm_hotplug_mdev_faults_libvirtd.py, with what this machine can
produce on them: the daemon has no VFIO and no mdev parent, so it refuses both calls.)
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml, secretclaims  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.backends.kvm.steps import DropClaim  # noqa: E402
from gpupass.core.domain.pci import PciAddress  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest  # noqa: E402
from gpupass.core.errors import ConnectionFailed, OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.cli import gpupass  # noqa: E402
from support.snapshots import payloads_survive_a_snapshot  # noqa: E402
from support.libvirt_proxy import (DOMAIN_DEFINE_XML, DOMAIN_GET_XML_DESC, SECRET_DEFINE_XML, SECRET_UNDEFINE,  # noqa: E402
                                   LibvirtProxy, kill_when_held, start_python)
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402

# A GPU of its own: claims are host-wide, and other tests on this daemon claim 41:00.0 and 43:00.0.
THE_GPU = dataclasses.replace(T4, address=PciAddress.parse("0000:44:00.0"))
GPU = str(THE_GPU.address)
VM, OTHER = "gp-fm-1", "gp-fm-2"

# (operation, the write whose call is faulted): every write an assign and a release of a powered-off VM make.
WRITES = [("assign", SECRET_DEFINE_XML), ("assign", DOMAIN_DEFINE_XML),
          ("release", DOMAIN_DEFINE_XML), ("release", SECRET_UNDEFINE)]
IDS = ["assign-claim", "assign-define", "release-define", "release-claim-removal"]


def plan_for(backend, vm, operation):
    request = AssignmentRequest(vm, (THE_GPU.address,)) if operation == "assign" else ReleaseRequest(vm)
    plan = make_plan(backend, with_gpus(backend.inventory(), THE_GPU), request, default_registry())
    assert not plan.blocked, plan.findings
    return plan


def run(uri, vm, operation, takeover_s=None):
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        if takeover_s is not None:
            backend._claim_takeover_s = takeover_s
        return execute(backend, plan_for(backend, vm, operation))


def claim_now(conn):
    try:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(GPU))
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        return None
    return secretclaims.from_xml(secret.XMLDesc(0))


def holders(conn):
    return [vm for vm in (VM, OTHER) if THE_GPU.address in domxml.read_facts(inactive_xml(conn, vm)).hostdevs]


def status(uri):
    """What `gpupass status` lists per VM (the unfinished notes of the inventory it prints)."""
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        facts = backend.inventory()
    return {vm.name: vm.unfinished for vm in facts.vms if vm.name in (VM, OTHER)}


@pytest.fixture
def proxy(libvirtd_daemon):
    directory = Path(tempfile.mkdtemp(prefix="gp-px-", dir="/tmp"))  # UNIX socket paths must stay short
    running = LibvirtProxy(libvirtd_daemon.socket_path, directory / "sock")
    yield running
    running.close()
    directory.rmdir()


@pytest.fixture
def host(libvirtd_uri, libvirt_conn):
    """Two powered-off VMs; -> (the VM's definition without the GPU, with it). The GPU is assigned first for a
    release. Claims are removed afterwards: they outlive the domains."""
    free = define(libvirt_conn, q35(VM))
    define(libvirt_conn, q35(OTHER))
    run(libvirtd_uri, VM, "assign")
    assigned = inactive_xml(libvirt_conn, VM)
    run(libvirtd_uri, VM, "release")
    assert inactive_xml(libvirt_conn, VM) == free and claim_now(libvirt_conn) is None
    yield free, assigned
    if (claim := claim_now(libvirt_conn)) is not None:
        libvirt_conn.secretLookupByUUIDString(claim.uuid).undefine()
    for name in (VM, OTHER):
        libvirt_conn.lookupByName(name).undefine()


def exactly(conn, definition, claimed):
    """The VM's stored definition is `definition`, byte for byte, and the GPU's claim names it (or is absent)."""
    claim = claim_now(conn)
    assert inactive_xml(conn, VM) == definition
    assert (claim.vm if claim else None) == (VM if claimed else None)
    assert holders(conn) in ([], [VM])  # never on two VMs


# -- a reply lost after the daemon carried the call out ------------------------------------------------------------
@pytest.mark.parametrize("operation,procedure", WRITES, ids=IDS)
def test_a_lost_reply_is_read_back_over_a_new_connection_and_the_vm_is_exactly_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, host, operation, procedure):
    free, assigned = host
    if operation == "release":
        run(libvirtd_uri, VM, "assign")
    before, before_claimed = (free, False) if operation == "assign" else (assigned, True)
    with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_for(backend, VM, operation)
        proxy.drop_reply_to(procedure)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert proxy.dropped.is_set()
    # gpupass read the VM and its claim again over a new connection, undid what the daemon had done, and says so
    assert caught.value.rolled_back is True, caught.value.message
    assert isinstance(caught.value.__cause__, ConnectionFailed)  # the lost connection, as libvirt's client said
    assert "End of file while reading data" in caught.value.message and "the VM is as it was" in caught.value.message
    exactly(libvirt_conn, before, before_claimed)
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}
    run(libvirtd_uri, VM, operation)  # the same command again converges
    exactly(libvirt_conn, assigned if operation == "assign" else free, operation == "assign")


def test_a_reply_that_never_comes_is_bounded_by_the_timeout_then_read_back_and_undone(libvirtd_uri, libvirt_conn,
                                                                                       proxy, host):
    """The daemon defined the VM but its reply never comes, the connection open (a host stalled after the work):
    the host's timeout bounds the wait, and the VM is read again over a new connection and undone, claim too."""
    free, assigned = host
    with KvmBackend(Target(uri=proxy.uri, name="stalled", timeout=2.0)) as backend:
        plan = plan_for(backend, VM, "assign")
        proxy.withhold_reply_to(DOMAIN_DEFINE_XML)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert caught.value.rolled_back is True, caught.value.message
    assert "did not answer within 2s (defineXML); what that call did on the host is not known" in caught.value.message
    assert "the VM is as it was" in caught.value.message
    exactly(libvirt_conn, free, claimed=False)
    run(libvirtd_uri, VM, "assign")
    exactly(libvirt_conn, assigned, claimed=True)


def test_a_reply_lost_on_the_define_and_again_on_its_undo_is_read_back_and_the_vm_is_exactly_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, host):
    """Two faults in a row: the assign's define is read back and undone, and the reply to that undo is lost too. The
    undo is read back in turn over a new connection (KvmBackend._take_back_define): the daemon did define the old
    definition, so the run's claim is removed and the VM is reported, and is, exactly as it was."""
    free, assigned = host
    with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_for(backend, VM, "assign")
        proxy.drop_reply_to(DOMAIN_DEFINE_XML, times=2)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    exactly(libvirt_conn, free, claimed=False)
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}
    run(libvirtd_uri, VM, "assign")
    exactly(libvirt_conn, assigned, claimed=True)


def test_a_reply_lost_on_the_define_on_its_undo_and_on_reading_the_undo_back_is_reported_and_the_claim_shown(
        libvirtd_uri, libvirt_conn, proxy, host):
    """Three faults in a row: the define's reply, its undo's, and the reply of the read that would tell whether the
    undo went through. gpupass cannot tell and says so (not rolled back, the step named); the daemon did undo the
    define, so the VM is as it was but the run's claim is left: status shows it, the same assign again finishes."""
    free, assigned = host
    with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_for(backend, VM, "assign")
        proxy.drop_reply_to(DOMAIN_DEFINE_XML, times=2)
        proxy.drop_reply_to(DOMAIN_GET_XML_DESC, skip=2)  # the guard's read, the observe's, then the undo's read-back
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert caught.value.rolled_back is False
    assert "these steps could not be undone: update the persistent definition of VM 'gp-fm-1' (undo by hand: " \
        "define the VM again with its previous XML; undo failed: restoring the previous VM definition: End of " \
        "file while reading data" in caught.value.message, caught.value.message
    assert "gpupass status proxied" in caught.value.remedy
    exactly(libvirt_conn, free, claimed=True)
    note, = status(libvirtd_uri)[VM]
    assert f"a claim on {GPU} for this VM" in note
    run(libvirtd_uri, VM, "assign", takeover_s=0.3)
    exactly(libvirt_conn, assigned, claimed=True)
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}


# -- a gpupass process killed with its call on the wire, which the daemon then carries out --------------------------
_CHILD = """
import sys
sys.path[:0] = {paths!r}
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.service import execute
from gpupass.core.target import Target
from test_kvm_fault_matrix_libvirtd import plan_for
with KvmBackend(Target(uri={uri!r}, name="killed")) as backend:
    execute(backend, plan_for(backend, {vm!r}, {operation!r}))
print("the run finished: it was not killed")
"""


def killed_on_the_wire(proxy, operation, procedure):
    """Start a gpupass run in its own process, hold its call of `procedure`, SIGKILL it, then let the call through
    and wait for the daemon's reply to it (which nobody reads)."""
    here = Path(__file__).resolve().parent
    script = _CHILD.format(paths=[str(here), str(here.parents[1])], uri=proxy.uri, vm=VM, operation=operation)
    proxy.hold_call_to(procedure)
    kill_when_held(proxy, start_python(script))


@pytest.mark.parametrize("operation,procedure", WRITES, ids=IDS)
def test_a_client_killed_with_its_write_on_the_wire_leaves_the_host_exact_or_shown_and_a_rerun_converges(
        libvirtd_uri, libvirt_conn, proxy, host, operation, procedure, tmp_path):
    free, assigned = host
    if operation == "release":
        run(libvirtd_uri, VM, "assign")
    killed_on_the_wire(proxy, operation, procedure)
    shown = status(libvirtd_uri)
    if (operation, procedure) in (("assign", SECRET_DEFINE_XML), ("release", DOMAIN_DEFINE_XML)):
        # Killed between the claim and the define (the claim made, the VM as it was), or between a release's
        # define and its claim's removal: the VM does not hold the GPU and its claim is left. status says so on the
        # VM, with the commands that finish or clear it.
        exactly(libvirt_conn, free, claimed=True)
        note, = shown[VM]
        assert f"a claim on {GPU} for this VM" in note and f"`gpupass assign HOST {VM} {GPU}`" in note
        printed = gpupass("status", libvirtd_uri)  # the command itself, as the admin runs it
        assert "UNFINISHED" in printed.stdout and f"a claim on {GPU} for this VM" in printed.stdout, printed
        assert f"`virsh secret-undefine {claim_now(libvirt_conn).uuid}`" in note and shown[OTHER] == ()
        assert f"`gpupass release HOST {VM} {GPU}` removes the claim (it finishes the release)" in note
        if operation == "release":
            # The same release again finishes it, as the admin runs it: it removes the claim (by its UUID, planned
            # from the inventory's one listAllSecrets); once more, it has nothing to do.
            with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
                step, = plan_for(backend, VM, "release").steps
                # a snapshot of the host plans the same step (the claims travel in its KVM state)
                assert payloads_survive_a_snapshot(backend, [ReleaseRequest(VM)], tmp_path) == {DropClaim}
            assert step.action == "kvm.drop-claim" and step.payload.uuid == claim_now(libvirt_conn).uuid
            again = gpupass("release", libvirtd_uri, VM, "--yes")
            assert "remove the claim on 0000:44:00.0 that a stopped gpupass run left" in again.stdout, again
            exactly(libvirt_conn, free, claimed=False)
            assert status(libvirtd_uri) == {VM: (), OTHER: ()}
            once_more = gpupass("release", libvirtd_uri, VM, "--yes")
            assert "Nothing to do" in once_more.stdout, once_more
            exactly(libvirt_conn, free, claimed=False)
            return
        run(libvirtd_uri, VM, "assign", takeover_s=0.3)  # the same assign again finishes it
        exactly(libvirt_conn, assigned, claimed=True)
    else:
        # Killed at the assign's define (its claim was made first) or at the release's last write: the daemon
        # carried it out, so the host is exactly what the finished command leaves, and status has nothing to say.
        done = assigned if operation == "assign" else free
        exactly(libvirt_conn, done, claimed=operation == "assign")
        assert shown == {VM: (), OTHER: ()}
        with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
            assert plan_for(backend, VM, operation).steps == ()  # the same command again has nothing to do
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}


def test_a_release_taken_back_after_a_lost_reply_never_puts_the_gpu_on_two_vms(libvirtd_uri, libvirt_conn, proxy,
                                                                                host):
    """The release's define went through but its reply was lost; while gpupass reads the VM again and takes the
    release back, another run assigns the GPU to another VM (the release's claim names a VM that no longer holds
    it: stale, so taken over). Taking the release back claims the GPU first, as an assign does: it finds the
    other VM holding it and leaves the release as it is, and says so."""
    import threading

    free, _ = host
    run(libvirtd_uri, VM, "assign")
    failure = []
    with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_for(backend, VM, "release")
        proxy.drop_reply_to(DOMAIN_DEFINE_XML)
        proxy.hold_call_to(SECRET_DEFINE_XML)  # the claim that taking the release back makes

        def release():
            try:
                execute(backend, plan)
            except OperationFailed as error:
                failure.append(error)

        releasing = threading.Thread(target=release)
        releasing.start()
        try:
            assert proxy.held.wait(30), "the release was not taken back through a claim"
            run(libvirtd_uri, OTHER, "assign", takeover_s=0.3)  # another admin, straight to the daemon
        finally:
            proxy.release()
            releasing.join(30)
    error, = failure
    assert error.rolled_back is False
    assert f"(left as it is: the release from VM '{VM}' stays: {GPU} is claimed by VM '{OTHER}'" in error.message
    assert "undo by hand" not in error.message and "the steps left as they are are the host's state" in error.remedy
    assert holders(libvirt_conn) == [OTHER] and claim_now(libvirt_conn).vm == OTHER
    assert inactive_xml(libvirt_conn, VM) == free  # released, as the daemon had done
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}


# -- a claim naming a VM that is no longer defined --------------------------------------------------------------------
@pytest.mark.parametrize("cleared_by", ["virsh", "assign"])
def test_a_claim_naming_a_vm_undefined_since_is_shown_on_the_host_with_the_commands_that_clear_it(
        libvirtd_uri, libvirt_conn, host, cleared_by):
    """A VM holding the GPU is undefined by hand (libvirt's virDomainUndefine knows nothing of gpupass's secret): its
    claim stays, naming a VM no release can reach. `status` shows it on the host (text and --json) with the claim's
    UUID; the `virsh secret-undefine` it prints removes it, and any assign of the GPU takes it over."""
    import json
    import shlex

    run(libvirtd_uri, VM, "assign")
    gone = claim_now(libvirt_conn)
    libvirt_conn.lookupByName(VM).undefine()
    try:
        printed = gpupass("status", libvirtd_uri)
        line = f"a claim on {GPU} names VM '{VM}' (UUID {gone.vm_uuid}), which is not defined on this host"
        assert "UNFINISHED" in printed.stdout and f"(host): {line}" in printed.stdout, printed.stdout
        document = json.loads(gpupass("status", libvirtd_uri, "--json").stdout)
        # (only this GPU's: other tests on this daemon may leave claims naming VMs they undefined)
        note, = [n for n in document["host"]["unfinished"] if n.startswith(f"a claim on {GPU} ")]
        assert note.startswith(line) and f"`virsh secret-undefine {gone.uuid}` removes the claim" in note
        if cleared_by == "virsh":
            command = note.split("`")[1]  # the command status prints, run as printed
            subprocess.run(["virsh", "-c", libvirtd_uri, *shlex.split(command)[1:]], check=True, capture_output=True)
            assert claim_now(libvirt_conn) is None
        else:
            run(libvirtd_uri, OTHER, "assign", takeover_s=0.3)  # any assign of the GPU takes the claim over
            assert claim_now(libvirt_conn).vm == OTHER
            assert THE_GPU.address in domxml.read_facts(inactive_xml(libvirt_conn, OTHER)).hostdevs
        after = json.loads(gpupass("status", libvirtd_uri, "--json").stdout)["host"]["unfinished"]
        assert [n for n in after if GPU in n] == []
    finally:
        define(libvirt_conn, q35(VM))  # the fixture undefines both VMs by name


# -- the release that finishes a stopped one: removing the claim it left ---------------------------------------------
@pytest.mark.parametrize("fault", ["lost-reply", "killed-client"])
def test_a_fault_on_removing_a_leftover_claim_leaves_the_claim_exactly_there_or_gone_and_a_rerun_converges(
        libvirtd_uri, libvirt_conn, proxy, host, fault):
    """A release killed between its define and its claim's removal left the claim; the release again removes it by
    its UUID (kvm.drop-claim), and that write is faulted: its reply lost (read back: gone, so defined again with the
    same UUID and reported as it was), or its client killed with it on the wire (the daemon removes it: exactly
    released). Either way the same release converges."""
    free, _ = host
    run(libvirtd_uri, VM, "assign")
    killed_on_the_wire(proxy, "release", DOMAIN_DEFINE_XML)
    left = claim_now(libvirt_conn)
    assert left.vm == VM and holders(libvirt_conn) == []
    if fault == "lost-reply":
        with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
            plan = plan_for(backend, VM, "release")
            proxy.drop_reply_to(SECRET_UNDEFINE)
            with pytest.raises(OperationFailed) as caught:
                execute(backend, plan)
        assert proxy.dropped.is_set() and caught.value.rolled_back is True, caught.value.message
        assert "End of file while reading data" in caught.value.message and "the VM is as it was" in caught.value.message
        assert claim_now(libvirt_conn) == left  # the same secret again: UUID, VM, run and date
        note, = status(libvirtd_uri)[VM]
        assert f"`gpupass release HOST {VM} {GPU}` removes the claim" in note
        run(libvirtd_uri, VM, "release")
    else:
        killed_on_the_wire(proxy, "release", SECRET_UNDEFINE)
    exactly(libvirt_conn, free, claimed=False)
    assert status(libvirtd_uri) == {VM: (), OTHER: ()}
    with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
        assert plan_for(backend, VM, "release").steps == ()  # once more: nothing to do


# -- the undo of that removal: the claim defined again ----------------------------------------------------------------
SECOND = "0000:4e:00.0"  # a second GPU's claim (no other test on this daemon claims it)


def leave_two_claims(conn):
    """Two claims a stopped run left naming VM, on GPU and SECOND, neither held: a release of VM removes both (two
    kvm.drop-claim steps, GPU's first). -> the claims, as they read back."""
    vm_uuid = conn.lookupByName(VM).UUIDString()
    left = [secretclaims.new(address, VM, vm_uuid, "t", "a stopped run", 0.0) for address in (GPU, SECOND)]
    for claim in left:
        conn.secretDefineXML(secretclaims.to_xml(claim), 0)
    return claims_left(conn)


def claims_left(conn):
    """The claims on GPU and SECOND now, in that order (absent ones left out)."""
    found = []
    for address in (GPU, SECOND):
        try:
            secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(address))
        except libvirt.libvirtError as exc:
            assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
            continue
        found.append(secretclaims.from_xml(secret.XMLDesc(0)))
    return found


def remove_second_claim(conn):
    try:
        conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(SECOND)).undefine()
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET


def the_second_removal_lost(proxy):
    """The first fault: the release's request to remove the second claim never reaches the daemon (the connection
    closes). Read back, that claim is still there; the first claim's removal is then undone: defined again."""
    proxy.lose_call_to(SECRET_UNDEFINE, skip=1)


@pytest.mark.parametrize("fault", ["lost-reply", "killed-client"])
def test_a_fault_on_putting_a_removed_leftover_claim_back_leaves_both_claims_and_the_release_again_converges(
        libvirtd_uri, libvirt_conn, proxy, host, fault):
    """The release removes the first of two leftover claims, its request to remove the second is lost on the way, and
    the first removal's undo defines that claim again (with its UUID): that write is faulted. Its reply lost, it is
    asked once more over a new connection and found done (the same UUID and usage defined again is done again:
    libvirt src/conf/virsecretobj.c, virSecretObjListAdd), so the release is reported rolled back; its client killed
    with it on the wire, the daemon carries it out. Either way both claims are there exactly as before, status shows
    both, and the release again removes both."""
    left = leave_two_claims(libvirt_conn)
    try:
        if fault == "lost-reply":
            with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
                plan = plan_for(backend, VM, "release")
                assert [s.action for s in plan.steps] == ["kvm.drop-claim", "kvm.drop-claim"]
                the_second_removal_lost(proxy)
                proxy.drop_reply_to(SECRET_DEFINE_XML)
                with pytest.raises(OperationFailed) as caught:
                    execute(backend, plan)
            assert proxy.lost.is_set() and proxy.dropped.is_set()
            assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, \
                caught.value.message
        else:
            the_second_removal_lost(proxy)
            killed_on_the_wire(proxy, "release", SECRET_DEFINE_XML)
            assert proxy.lost.is_set()
        assert claims_left(libvirt_conn) == left  # exactly as before: both, with their UUIDs
        notes = status(libvirtd_uri)[VM]  # (in the order libvirt lists secrets)
        assert sorted(note.split(" for this VM")[0] for note in notes) == [f"a claim on {a}" for a in (GPU, SECOND)]
        run(libvirtd_uri, VM, "release")
        assert claims_left(libvirt_conn) == [] and status(libvirtd_uri) == {VM: (), OTHER: ()}
    finally:
        remove_second_claim(libvirt_conn)
