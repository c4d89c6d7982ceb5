"""The endpoint's faults on each write of an assign and of a release, on a REAL libvirtd: the daemon KILLED (SIGKILL)
with the write on the wire -- before it carried it out, or after, its reply still on the way -- and restarted as a host
restarts it; and the daemon FROZEN (SIGSTOP) with the write in its socket, thawed after gpupass gave up.

The writes are the fault matrix's (test_kvm_fault_matrix_libvirtd.py): the GPU's claim (secretDefineXML), the VM's
definition (defineXML), the claim's removal (virSecretUndefine); and the removal of a claim a stopped run left
(kvm.drop-claim) and a vGPU share's define (test_kvm_share_faults_libvirtd.py). A proxy in front of the daemon's socket
(tests/support/libvirt_proxy.py) holds the write until the daemon is killed or frozen, so no sleep decides the
timing. libvirtd saves a domain definition and a persistent secret to its config dir before it answers the call
(libvirt 9.0.0 src/qemu/qemu_driver.c, qemuDomainDefineXMLFlags -> virDomainDefSave; src/secret/secret_driver.c,
secretDefineXML -> virSecretObjSaveConfig for a secret that is not ephemeral): what it carried out before it died is
there when it comes back; what never reached it is not.

gpupass cannot read the host while the daemon is down or frozen: every fault is reported "not known" (rolled_back
false), bounded by the host's timeout. The host is then exactly before or exactly after, or it holds a claim that
`status` shows on the VM with the commands that finish or clear it; the same command again converges.

The daemon is one of this file's own (killing the suite's would break every other test's connection).
"""

# The fault matrix's helpers are imported below; ruff reads a fixture taken as a parameter as a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.errors import OperationFailed  # noqa: E402
from gpupass.core.service import execute  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.frozen_endpoint import freeze, thaw  # noqa: E402
from support.libvirt_proxy import LibvirtProxy  # noqa: E402
from test_kvm_backend_libvirtd import define, inactive_xml, q35  # noqa: E402
from support.libvirt_proxy import (DOMAIN_ATTACH_DEVICE_FLAGS, DOMAIN_DEFINE_XML, DOMAIN_DETACH_DEVICE_FLAGS,  # noqa: E402
                                   SECRET_DEFINE_XML, SECRET_UNDEFINE)
from test_kvm_fault_matrix_libvirtd import (GPU, IDS, OTHER, THE_GPU, VM, WRITES, claim_now, plan_for, run,  # noqa: E402
                                            status)

THE_GPU_ADDRESS = THE_GPU.address
from tests.support.libvirtd import UnprivilegedLibvirtd  # noqa: E402

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def own_daemon():
    daemon = UnprivilegedLibvirtd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def proxy(own_daemon):
    directory = Path(tempfile.mkdtemp(prefix="gp-pk-", dir="/tmp"))  # UNIX socket paths must stay short
    running = LibvirtProxy(own_daemon.socket_path, directory / "sock")
    yield running
    running.close()
    directory.rmdir()


@pytest.fixture
def host(own_daemon):
    """Two powered-off VMs on the file's daemon; -> (the VM's definition without the GPU, with it)."""
    conn = libvirt.open(own_daemon.uri)
    free = define(conn, q35(VM))
    define(conn, q35(OTHER))
    run(own_daemon.uri, VM, "assign")
    assigned = inactive_xml(conn, VM)
    run(own_daemon.uri, VM, "release")
    conn.close()
    yield free, assigned
    if not own_daemon.running:  # a test that failed with the daemon down
        own_daemon.relaunch()
    conn = libvirt.open(own_daemon.uri)
    if (claim := claim_now(conn)) is not None:
        conn.secretLookupByUUIDString(claim.uuid).undefine()
    for name in (VM, OTHER):
        conn.lookupByName(name).undefine()
    conn.close()


def faulted(proxy, operation, procedure, fault, withhold=False, planner=None, backend_class=KvmBackend, skip=0,
            first_fault=None):
    """Run `operation` through the proxy in a thread; when its call of `procedure` (after `skip` such calls) is held,
    apply `fault` (a callable) and let the call go on (`withhold`: its reply is kept from gpupass). `first_fault` arms
    the proxy before the run (a lost reply that sets an undo going). -> the error gpupass reported."""
    failure: list[BaseException] = []

    def go():
        with backend_class(Target(uri=proxy.uri, name="faulted", timeout=TIMEOUT_S)) as backend:
            plan = planner(backend) if planner else plan_for(backend, VM, operation)
            if first_fault is not None:
                first_fault()
            proxy.hold_call_to(procedure, skip=skip)
            if withhold:
                proxy.withhold_reply_to(procedure, skip=skip)
            try:
                execute(backend, plan)
            except BaseException as error:  # noqa: BLE001 - what the test asserts on
                failure.append(error)

    running = threading.Thread(target=go)
    running.start()
    try:
        assert proxy.held.wait(60), "the write never reached the proxy"
        fault()
    finally:
        proxy.release()
        running.join(120)
    assert not running.is_alive(), "gpupass did not give up within its bounds"
    error, = failure
    assert isinstance(error, OperationFailed), error
    return error


def expect_after_restart(conn, operation, procedure, carried_out, free, assigned):
    """What the host holds once the daemon is back: the writes before the faulted one, and that one if carried out.
    -> whether a claim is left on a VM that does not hold the GPU (status must show it)."""
    order = [p for o, p in WRITES if o == operation]
    made = order[:order.index(procedure) + (1 if carried_out else 0)]
    claim = claim_now(conn)
    if operation == "assign":
        holds = len(made) == 2
        assert inactive_xml(conn, VM) == (assigned if holds else free)
        assert (claim.vm if claim else None) == (VM if made else None)
        return bool(made) and not holds
    released = len(made) >= 1
    assert inactive_xml(conn, VM) == (free if released else assigned)
    assert (claim.vm if claim else None) == (None if len(made) == 2 else VM)
    return released and len(made) == 1


def converges(uri, operation, free, assigned, left_claim):
    shown = status(uri)
    if left_claim:
        note, = shown[VM]
        assert f"a claim on {GPU} for this VM" in note and f"`gpupass release HOST {VM} {GPU}`" in note, note
    else:
        assert shown == {VM: (), OTHER: ()}
    run(uri, VM, operation, takeover_s=0.3)  # the same command again finishes it
    conn = libvirt.open(uri)
    try:
        claim = claim_now(conn)
        assert inactive_xml(conn, VM) == (assigned if operation == "assign" else free)
        assert (claim.vm if claim else None) == (VM if operation == "assign" else None)
    finally:
        conn.close()
    assert status(uri) == {VM: (), OTHER: ()}


@pytest.mark.parametrize("carried_out", [False, True], ids=["before-the-work", "after-the-work"])
@pytest.mark.parametrize("operation,procedure", WRITES, ids=IDS)
def test_a_daemon_killed_with_a_write_on_the_wire_is_reported_not_known_and_a_rerun_converges(
        own_daemon, proxy, host, operation, procedure, carried_out):
    """SIGKILL of libvirtd with the write held at the proxy (never carried out), or once the daemon has carried it out
    with its reply held back. gpupass's connection drops; reading the host again fails (nothing listens): reported
    not known, not rolled back, the host named. Restarted, the daemon holds exactly what it had carried out."""
    free, assigned = host
    if operation == "release":
        run(own_daemon.uri, VM, "assign")

    def kill():
        if carried_out:
            proxy.release()
            assert proxy.replied.wait(30), "the daemon never carried the write out"
        own_daemon.kill_daemon()

    error = faulted(proxy, operation, procedure, kill, withhold=carried_out)
    assert error.rolled_back is False, error.message
    assert "could not be read again" in error.message, error.message
    own_daemon.relaunch()
    conn = libvirt.open(own_daemon.uri)
    try:
        left_claim = expect_after_restart(conn, operation, procedure, carried_out, free, assigned)
    finally:
        conn.close()
    converges(own_daemon.uri, operation, free, assigned, left_claim)


@pytest.mark.parametrize("operation,procedure", WRITES, ids=IDS)
def test_a_daemon_frozen_with_a_write_in_its_socket_is_reported_not_known_and_the_thawed_host_converges(
        own_daemon, proxy, host, operation, procedure):
    """SIGSTOP of libvirtd, then the write goes into its socket: no answer comes, gpupass gives up after the host's
    timeout and cannot read the host again (it does not answer either): reported not known, not rolled back. Thawed,
    the daemon carries the waiting write out: the host is exactly after that write."""
    free, assigned = host
    if operation == "release":
        run(own_daemon.uri, VM, "assign")
    frozen = False

    def freeze_now():
        nonlocal frozen
        freeze(own_daemon.pid)
        frozen = True

    try:
        error = faulted(proxy, operation, procedure, freeze_now)
    finally:
        if frozen:
            thaw(own_daemon.pid)
    assert error.rolled_back is False, error.message
    assert f"did not answer within {TIMEOUT_S:g}s" in error.message, error.message
    conn = libvirt.open(own_daemon.uri)
    try:
        deadline = time.monotonic() + 30  # the thawed daemon serves what waited in its socket
        while True:
            try:
                left_claim = expect_after_restart(conn, operation, procedure, True, free, assigned)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        conn.close()
    converges(own_daemon.uri, operation, free, assigned, left_claim)


# -- a release finishing what a stopped one left (its claim), and a vGPU share's define --------------------------------
# -- the undo that follows a lost reply: the daemon killed or frozen on it --------------------------------------------
# (operation, the undo's call, calls of it before the undo's): after the define's reply is lost and the define is read
# back, the assign's undo defines the old definition, then removes its claim; the release's undo claims the GPU again
# (the release's own claim is still there: refused, and adopted), then defines the old definition.
UNDOS = {"assign-undo-define": ("assign", DOMAIN_DEFINE_XML, 1),
         "assign-undo-claim-removal": ("assign", SECRET_UNDEFINE, 0),
         "release-undo-claim": ("release", SECRET_DEFINE_XML, 0),
         "release-undo-define": ("release", DOMAIN_DEFINE_XML, 1)}
# -> (the VM holds the GPU, the claim names the VM) once the daemon is back: the undo's call carried out or not.
UNDO_OUTCOMES = {("assign-undo-define", False): (True, True), ("assign-undo-define", True): (False, True),
                 ("assign-undo-claim-removal", False): (False, True), ("assign-undo-claim-removal", True): (False, False),
                 ("release-undo-claim", False): (False, True), ("release-undo-claim", True): (False, True),
                 ("release-undo-define", False): (False, True), ("release-undo-define", True): (True, True)}


@pytest.mark.parametrize("fault", ["killed-before-the-work", "killed-after-the-work", "frozen"])
@pytest.mark.parametrize("undo", list(UNDOS))
def test_a_daemon_fault_on_the_undo_after_a_lost_reply_is_reported_not_undone_and_a_rerun_converges(
        own_daemon, proxy, host, undo, fault):
    """The define's reply is lost after the daemon carried it out; gpupass reads it back and undoes it, and the daemon
    is killed (before or after carrying the undo's call out) or frozen on that call. Reported not rolled back, the
    step and its undo named; back, the host is exactly after (the undo never reached it), exactly before, or the VM
    without the GPU and its claim left, which status shows; the same command again converges."""
    free, assigned = host
    operation, procedure, skip = UNDOS[undo]
    if operation == "release":
        run(own_daemon.uri, VM, "assign")
    apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
    try:
        error = faulted(proxy, operation, procedure, apply, withhold=withhold, skip=skip,
                        first_fault=lambda: proxy.drop_reply_to(DOMAIN_DEFINE_XML))
    finally:
        afterwards()
    assert proxy.dropped.is_set()
    assert error.rolled_back is False, error.message
    assert "could not be undone" in error.message, error.message
    holds, claimed = UNDO_OUTCOMES[(undo, fault != "killed-before-the-work")]
    conn = libvirt.open(own_daemon.uri)
    try:
        def exactly():
            assert inactive_xml(conn, VM) == (assigned if holds else free)
            assert_claim(conn, VM if claimed else None)
        eventually(exactly)
    finally:
        conn.close()
    converges(own_daemon.uri, operation, free, assigned, left_claim=claimed and not holds)


def kill_or_freeze(own_daemon, proxy, fault):
    """-> (the fault to apply when the call is held, whether its reply is withheld, what to undo after it)."""
    if fault == "frozen":
        def freeze_now():
            freeze(own_daemon.pid)
        return freeze_now, False, lambda: thaw(own_daemon.pid)

    def kill():
        if fault == "killed-after-the-work":
            proxy.release()
            assert proxy.replied.wait(30), "the daemon never carried the write out"
        own_daemon.kill_daemon()
    return kill, fault == "killed-after-the-work", own_daemon.relaunch


def eventually(check):
    deadline = time.monotonic() + 30  # a thawed daemon serves what waited in its socket
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


FAULTS = ["killed-before-the-work", "killed-after-the-work", "frozen"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_daemon_fault_on_the_removal_of_a_claim_a_stopped_run_left_is_reported_and_the_release_again_converges(
        own_daemon, proxy, host, fault):
    """The VM holds no GPU but a stopped run's claim names it; `release` removes it (kvm.drop-claim, virSecretUndefine
    by its UUID). The daemon killed or frozen on that call: reported not known; back, the claim is there (status shows
    it, the release again removes it) or gone (exactly released)."""
    from gpupass.backends.kvm import secretclaims

    conn = libvirt.open(own_daemon.uri)
    try:
        vm_uuid = conn.lookupByName(VM).UUIDString()
        conn.secretDefineXML(secretclaims.to_xml(secretclaims.new(GPU, VM, vm_uuid, "t", "a stopped run", 0.0)), 0)
    finally:
        conn.close()
    free, assigned = host
    apply, withhold, after = kill_or_freeze(own_daemon, proxy, fault)
    try:
        error = faulted(proxy, "release", SECRET_UNDEFINE, apply, withhold=withhold)
    finally:
        after()
    assert error.rolled_back is False, error.message
    removed = fault != "killed-before-the-work"
    conn = libvirt.open(own_daemon.uri)
    try:
        eventually(lambda: assert_claim(conn, None if removed else VM))
        assert inactive_xml(conn, VM) == free
    finally:
        conn.close()
    converges(own_daemon.uri, "release", free, assigned, left_claim=not removed)


def assert_claim(conn, vm):
    claim = claim_now(conn)
    assert (claim.vm if claim else None) == vm


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("operation", ["assign", "release", "assign-undo", "release-undo"])
def test_a_daemon_fault_on_a_vgpu_share_define_leaves_the_vm_exactly_before_or_after_and_a_rerun_converges(
        own_daemon, proxy, fault, operation):
    """The define that gives a domain its mediated device or takes it back (test_kvm_share_faults_libvirtd.py), or its
    undo after the define's reply was lost (`-undo`), with the daemon killed before or after carrying it out, or
    frozen: reported not known (or not undone); the VM exactly before or after (shares carry no claim), nothing for
    status to show, the same command again converges."""
    from test_kvm_share_faults_libvirtd import VM as SHARE_VM, KvmBackendWithAVgpu, plan_share
    from test_kvm_share_faults_libvirtd import run as run_share

    conn = libvirt.open(own_daemon.uri)
    try:
        free = define(conn, q35(SHARE_VM))
        run_share(own_daemon.uri, "assign")
        given = inactive_xml(conn, SHARE_VM)
        if operation.startswith("assign"):
            run_share(own_daemon.uri, "release")
        command, undo = operation.removesuffix("-undo"), operation.endswith("-undo")
        before, after = (free, given) if command == "assign" else (given, free)
        apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
        try:
            error = faulted(proxy, command, DOMAIN_DEFINE_XML, apply, withhold=withhold, skip=1 if undo else 0,
                            first_fault=(lambda: proxy.drop_reply_to(DOMAIN_DEFINE_XML)) if undo else None,
                            planner=lambda backend: plan_share(backend, command), backend_class=KvmBackendWithAVgpu)
        finally:
            afterwards()
        assert error.rolled_back is False, error.message
        conn.close()
        conn = libvirt.open(own_daemon.uri)
        # the faulted call carried out or not: the define's makes it "after", its undo's "before" again
        carried_out = fault != "killed-before-the-work"
        expected = (before if carried_out else after) if undo else (after if carried_out else before)

        def exactly():
            assert inactive_xml(conn, SHARE_VM) == expected
        eventually(exactly)
        with KvmBackendWithAVgpu(Target(uri=own_daemon.uri, name="session")) as backend:
            assert backend.inventory().find_vm(SHARE_VM).unfinished == ()
        run_share(own_daemon.uri, command)  # the same command again converges
        assert inactive_xml(conn, SHARE_VM) == after
    finally:
        if not own_daemon.running:
            own_daemon.relaunch()
            conn = libvirt.open(own_daemon.uri)
        conn.lookupByName(SHARE_VM).undefine()
        conn.close()


# -- an assign taking over a stale claim: the removal of the stale claim ---------------------------------------------
@pytest.mark.parametrize("fault", FAULTS)
def test_a_daemon_fault_on_the_removal_of_a_stale_claim_during_a_takeover_is_reported_and_the_assign_again_converges(
        own_daemon, proxy, host, fault):
    """A stopped run left a claim on the GPU naming VM, which does not hold it (stale); an assign of the GPU to OTHER
    takes it over: it removes the stale claim by its UUID (virSecretUndefine), then claims the GPU. The daemon killed
    or frozen on that removal: reported not known; back, the stale claim is there (status shows it on VM) or gone (the
    host exactly as before, the stale claim cleared, which any assign of the GPU does); the same assign again gives
    the GPU to OTHER with its claim."""
    from gpupass.backends.kvm import secretclaims

    conn = libvirt.open(own_daemon.uri)
    try:
        vm_uuid = conn.lookupByName(VM).UUIDString()
        conn.secretDefineXML(secretclaims.to_xml(secretclaims.new(GPU, VM, vm_uuid, "t", "a stopped run", 0.0)), 0)
    finally:
        conn.close()
    free, _ = host
    apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
    try:
        error = faulted(proxy, "assign", SECRET_UNDEFINE, apply, withhold=withhold,
                        planner=lambda backend: plan_for(backend, OTHER, "assign"))
    finally:
        afterwards()
    assert error.rolled_back is False, error.message
    removed = fault != "killed-before-the-work"
    conn = libvirt.open(own_daemon.uri)
    try:
        eventually(lambda: assert_claim(conn, None if removed else VM))
        assert inactive_xml(conn, VM) == free and THE_GPU_ADDRESS not in holders_of(conn, OTHER)
    finally:
        conn.close()
    shown = status(own_daemon.uri)
    if removed:
        assert shown == {VM: (), OTHER: ()}
    else:
        note, = shown[VM]
        assert f"a claim on {GPU} for this VM" in note, note
    run(own_daemon.uri, OTHER, "assign", takeover_s=0.3)  # the same assign again takes the claim over and finishes
    conn = libvirt.open(own_daemon.uri)
    try:
        assert_claim(conn, OTHER)
        assert THE_GPU_ADDRESS in holders_of(conn, OTHER) and inactive_xml(conn, VM) == free
    finally:
        conn.close()
    assert status(own_daemon.uri) == {VM: (), OTHER: ()}
    run(own_daemon.uri, OTHER, "release")


def holders_of(conn, vm):
    from gpupass.backends.kvm import domxml

    return domxml.read_facts(inactive_xml(conn, vm)).hostdevs


# -- a hot-plug on a running VM (`assign --live`, `release --live`), and its undo after a lost reply -------------------
# The device is test_kvm_hotplug_readback_libvirtd.py's stand-in (a USB tablet: a GPU's live attach needs VFIO, which
# this machine lacks), plugged by the product's backend with only the device it carries and how it is told in the live
# definition changed. libvirtd saves a running domain's live state to its state dir before it answers a hot-plug
# (libvirt 9.0.0 src/qemu/qemu_driver.c, qemuDomainAttachDeviceLiveAndConfig / qemuDomainDetachDeviceLiveAndConfig ->
# virDomainObjSave of the status XML), and QEMU outlives a killed libvirtd, which reconnects to it when it comes back
# (src/qemu/qemu_process.c, qemuProcessReconnect): what it carried out before it died is in the VM when it is back.
HOTPLUGS = {"assign": DOMAIN_ATTACH_DEVICE_FLAGS, "release": DOMAIN_DETACH_DEVICE_FLAGS}


@pytest.fixture
def live_vm(own_daemon):
    """The stand-in's VM defined and started on the file's daemon (TCG, no disk: it idles in its firmware); -> its
    stored definition without the GPU, and with it."""
    from test_kvm_hotplug_readback_libvirtd import VM as LIVE_VM, claim_now as live_claim
    from test_kvm_hotplug_readback_libvirtd import run as run_live

    conn = libvirt.open(own_daemon.uri)
    try:
        free = define(conn, q35(LIVE_VM))
        conn.lookupByName(LIVE_VM).create()
        run_live(own_daemon.uri, "assign")
        assigned = inactive_xml(conn, LIVE_VM)
        run_live(own_daemon.uri, "release")
        assert inactive_xml(conn, LIVE_VM) == free and live_claim(conn) is None
    finally:
        conn.close()
    yield free, assigned
    if not own_daemon.running:  # a test that failed with the daemon down
        own_daemon.relaunch()
    conn = libvirt.open(own_daemon.uri)
    try:
        if (claim := live_claim(conn)) is not None:
            conn.secretLookupByUUIDString(claim.uuid).undefine()
        domain = conn.lookupByName(LIVE_VM)
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    finally:
        conn.close()


def live_now(uri):
    """-> (the tablet is plugged in the running VM, its stored definition, the VM the GPU's claim names)."""
    from test_kvm_hotplug_readback_libvirtd import VM as LIVE_VM, claim_now as live_claim, tablets

    conn = libvirt.open(uri)
    try:
        domain = conn.lookupByName(LIVE_VM)
        assert domain.isActive(), "the VM stopped"
        claim = live_claim(conn)
        return tablets(domain.XMLDesc(0)) == 1, inactive_xml(conn, LIVE_VM), (claim.vm if claim else None)
    finally:
        conn.close()


def live_status(uri):
    from test_kvm_hotplug_readback_libvirtd import VM as LIVE_VM, KvmBackendPluggingATablet

    with KvmBackendPluggingATablet(Target(uri=uri, name="session")) as backend:
        return backend.inventory().find_vm(LIVE_VM).unfinished


def live_again(uri, operation):
    """The same `assign --live` / `release --live` again, planned from what the host holds now."""
    from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseOptions, ReleaseRequest
    from gpupass.core.plugins import default_registry
    from gpupass.core.service import make_plan
    from test_kvm_backend_libvirtd import with_gpus
    from test_kvm_hotplug_readback_libvirtd import THE_GPU as LIVE_GPU, VM as LIVE_VM, KvmBackendPluggingATablet

    request = AssignmentRequest(LIVE_VM, (LIVE_GPU.address,), AssignOptions(live=True)) if operation == "assign" else \
        ReleaseRequest(LIVE_VM, (LIVE_GPU.address,), ReleaseOptions(live=True))
    with KvmBackendPluggingATablet(Target(uri=uri, name="session")) as backend:
        made = make_plan(backend, with_gpus(backend.inventory(), LIVE_GPU), request, default_registry())
        assert not made.blocked, made.findings
        execute(backend, made)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("undo", [False, True], ids=["the-hotplug", "its-undo"])
@pytest.mark.parametrize("operation", ["assign", "release"])
def test_a_daemon_fault_on_a_hotplug_or_its_undo_is_reported_and_status_shows_what_the_vm_holds_live(
        own_daemon, proxy, live_vm, operation, undo, fault):
    """`assign --live` hot-plugs the device, then defines the VM with it; `release --live` unplugs it, then defines the
    VM without it. The daemon is killed (before or after carrying the call out) or frozen on the hot-plug, or on its
    undo after the hot-plug's reply was lost (read back: done, so undone). Reported not known (or not undone), not
    rolled back. Back, the VM is exactly as before the command, or it holds the device only live or only in its stored
    definition: `status` says which with the command that finishes it, and the same command again converges."""
    from test_kvm_hotplug_readback_libvirtd import GPU as LIVE_GPU, VM as LIVE_VM, KvmBackendPluggingATablet
    from test_kvm_hotplug_readback_libvirtd import plan as plan_live, run as run_live

    free, assigned = live_vm
    if operation == "release":
        run_live(own_daemon.uri, "assign")
    before = (operation == "release", assigned if operation == "release" else free, LIVE_VM if operation == "release"
              else None)
    # the undo is the opposite hot-plug; the first fault loses the hot-plug's reply after the daemon carried it out
    other = HOTPLUGS["release" if operation == "assign" else "assign"]
    procedure = other if undo else HOTPLUGS[operation]
    apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
    try:
        error = faulted(proxy, operation, procedure, apply, withhold=withhold,
                        first_fault=(lambda: proxy.drop_reply_to(HOTPLUGS[operation])) if undo else None,
                        planner=lambda backend: plan_live(backend, operation), backend_class=KvmBackendPluggingATablet)
    finally:
        afterwards()
    assert error.rolled_back is False, error.message
    assert ("could not be undone" if undo else "could not be read again") in error.message, error.message
    # The faulted call carried out or not: the hot-plug's leaves the device plugged in (assign) or out (release) with the
    # stored definition as it was; its undo's puts the VM back exactly as before.
    carried_out = fault != "killed-before-the-work"
    plugged = before[0] if carried_out == undo else not before[0]
    eventually(lambda: assert_live(own_daemon.uri, (plugged, before[1], before[2])))
    shown = live_status(own_daemon.uri)
    if plugged == before[0]:
        assert shown == (), shown  # exactly as before
    elif operation == "assign":
        note, = shown
        assert f"holds {LIVE_GPU} only while it runs" in note and f"`gpupass assign HOST {LIVE_VM} {LIVE_GPU} --live`" \
            in note, note
    else:
        note, = shown
        assert f"holds {LIVE_GPU} in its stored definition but not while it runs" in note and \
            f"`gpupass release HOST {LIVE_VM} {LIVE_GPU} --live` finishes the release" in note, note
    live_again(own_daemon.uri, operation)  # the same command again converges: plugged (or unplugged) once, defined
    assert_live(own_daemon.uri, (operation == "assign", assigned if operation == "assign" else free,
                                 LIVE_VM if operation == "assign" else None))
    assert live_status(own_daemon.uri) == ()
    if operation == "assign":
        run_live(own_daemon.uri, "release")


def assert_live(uri, expected):
    assert live_now(uri) == expected


# -- creating a mediated device (a share's assign with no free device of its type) ------------------------------------
@pytest.mark.parametrize("fault", ["killed-before-the-work", "frozen"])
def test_a_daemon_fault_on_creating_a_mediated_device_is_reported_not_known_and_the_host_is_as_it_was(
        own_daemon, proxy, fault):
    """virNodeDeviceDefineXML held at the proxy, the daemon killed before it gets it, or frozen with it in its socket
    (test_kvm_hotplug_mdev_faults_libvirtd.py's card and share). Reported not known, not rolled back. Back (restarted,
    or thawed: it then answers the define waiting in its socket with its refusal, no mdevctl here), no mediated device
    was made; the VM carries the record the run wrote before the define (its undo could not read the host), which
    status shows; the same command again gets the daemon's own answer, rolled back, and the release takes the record
    out: the VM exactly as it was. (Killed after carrying the define out cannot be made here: this daemon carries none
    out.)"""
    from test_kvm_hotplug_mdev_faults_libvirtd import (VM as MDEV_VM, KvmBackendWithACard, mdevs, plan_share,
                                                       release_share_intent)
    from support.libvirt_proxy import NODE_DEVICE_DEFINE_XML

    conn = libvirt.open(own_daemon.uri)
    try:
        free = define(conn, q35(MDEV_VM))
    finally:
        conn.close()
    try:
        apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
        try:
            error = faulted(proxy, "assign", NODE_DEVICE_DEFINE_XML, apply, withhold=withhold, planner=plan_share,
                            backend_class=KvmBackendWithACard)
        finally:
            afterwards()
        assert error.rolled_back is False, error.message
        assert "could not be read again" in error.message, error.message
        conn = libvirt.open(own_daemon.uri)
        try:
            left = eventually(lambda: _with_intent_only(conn, MDEV_VM, free))
            assert mdevs(conn) == []
        finally:
            conn.close()
        with KvmBackendWithACard(Target(uri=own_daemon.uri, name="session")) as backend:
            (note,) = backend.inventory().find_vm(MDEV_VM).unfinished
            assert "it was creating mediated device" in note and "which is not on the host" in note, note
            with pytest.raises(OperationFailed) as again:
                execute(backend, plan_share(backend))
        assert again.value.rolled_back is True, again.value.message
        release_share_intent(own_daemon.uri)
        conn = libvirt.open(own_daemon.uri)
        try:
            assert mdevs(conn) == [] and inactive_xml(conn, MDEV_VM) == free and left != free
        finally:
            conn.close()
    finally:
        if not own_daemon.running:
            own_daemon.relaunch()
        conn = libvirt.open(own_daemon.uri)
        conn.lookupByName(MDEV_VM).undefine()
        conn.close()


def _with_intent_only(conn, vm, free):
    """The VM's definition holds the record of a mediated device being created and is otherwise `free`. -> it."""
    from gpupass.backends.kvm import domxml

    xml = inactive_xml(conn, vm)
    (intent,) = domxml.mdev_intents(domxml.parse(xml))
    assert not intent.removing and domxml.comparable(xml) == domxml.comparable(free)
    return xml


# -- a release finishing a stopped one: putting back a leftover claim it removed ----------------------------------------
@pytest.mark.parametrize("fault", FAULTS)
def test_a_daemon_fault_on_putting_a_removed_leftover_claim_back_is_reported_and_the_release_again_converges(
        own_daemon, proxy, host, fault):
    """Two leftover claims name VM; the release removes the first, its request to remove the second is lost on the way,
    and the undo of the first removal (the claim defined again, kvm.drop-claim's undo) meets the daemon killed (before
    or after carrying it out) or frozen. Reported not undone, not rolled back. Back, the first claim is there again or
    not, the second is: status shows each claim left on VM, and the release again removes them all."""
    from test_kvm_fault_matrix_libvirtd import claims_left, leave_two_claims, remove_second_claim, the_second_removal_lost

    conn = libvirt.open(own_daemon.uri)
    try:
        left = leave_two_claims(conn)
    finally:
        conn.close()
    try:
        apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
        try:
            error = faulted(proxy, "release", SECRET_DEFINE_XML, apply, withhold=withhold,
                            first_fault=lambda: the_second_removal_lost(proxy))
        finally:
            afterwards()
        assert proxy.lost.is_set()
        assert error.rolled_back is False and "could not be undone" in error.message, error.message
        put_back = fault != "killed-before-the-work"
        conn = libvirt.open(own_daemon.uri)
        try:
            eventually(lambda: _claims_are(conn, left if put_back else left[1:]))
        finally:
            conn.close()
        assert len(status(own_daemon.uri)[VM]) == (2 if put_back else 1)
        run(own_daemon.uri, VM, "release")
        conn = libvirt.open(own_daemon.uri)
        try:
            assert claims_left(conn) == []
        finally:
            conn.close()
        assert status(own_daemon.uri) == {VM: (), OTHER: ()}
    finally:
        if not own_daemon.running:
            own_daemon.relaunch()
        conn = libvirt.open(own_daemon.uri)
        remove_second_claim(conn)
        conn.close()


def _claims_are(conn, expected):
    from test_kvm_fault_matrix_libvirtd import claims_left

    assert claims_left(conn) == expected


# -- the record of a mediated device an assign is creating (kvm.record-mdev-intent) and its undo ------------------------
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("step", ["the-record", "its-undo"])
def test_a_daemon_fault_on_the_record_of_a_vgpu_being_created_leaves_it_shown_or_absent_and_a_release_converges(
        own_daemon, proxy, fault, step):
    """The define that records in the VM the mediated device an assign is about to create (the-record), or the define
    that takes the record out again after the daemon refused the device (its-undo: no mdevctl here), held at the proxy,
    the daemon killed before or after carrying it out, or frozen with it in its socket. Reported not known (rolled_back
    false). Back, the VM is exactly as it was, or as it was plus the record, which status shows on the VM with the
    commands that finish or remove it; a release of the card takes it out: the VM exactly as it was."""
    from test_kvm_hotplug_mdev_faults_libvirtd import (VM as MDEV_VM, KvmBackendWithACard, mdevs, plan_share,
                                                       release_share_intent)

    conn = libvirt.open(own_daemon.uri)
    try:
        free = define(conn, q35(MDEV_VM))
    finally:
        conn.close()
    try:
        apply, withhold, afterwards = kill_or_freeze(own_daemon, proxy, fault)
        try:
            error = faulted(proxy, "assign", DOMAIN_DEFINE_XML, apply, withhold=withhold, planner=plan_share,
                            backend_class=KvmBackendWithACard, skip=0 if step == "the-record" else 1)
        finally:
            afterwards()
        assert error.rolled_back is False, error.message
        recorded = step == "its-undo" and fault == "killed-before-the-work" or \
            step == "the-record" and fault != "killed-before-the-work"  # a frozen daemon, thawed, carries it out

        def settled():
            conn = libvirt.open(own_daemon.uri)
            try:
                if recorded:
                    return _with_intent_only(conn, MDEV_VM, free)
                assert inactive_xml(conn, MDEV_VM) == free
                return free
            finally:
                conn.close()
        assert eventually(settled)
        with KvmBackendWithACard(Target(uri=own_daemon.uri, name="session")) as backend:
            notes = backend.inventory().find_vm(MDEV_VM).unfinished
        if recorded:
            (note,) = notes
            assert "it was creating mediated device" in note and "`gpupass release HOST" in note, note
            release_share_intent(own_daemon.uri)
        else:
            assert notes == ()
        conn = libvirt.open(own_daemon.uri)
        try:
            assert mdevs(conn) == [] and inactive_xml(conn, MDEV_VM) == free
        finally:
            conn.close()
    finally:
        if not own_daemon.running:
            own_daemon.relaunch()
        conn = libvirt.open(own_daemon.uri)
        conn.lookupByName(MDEV_VM).undefine()
        conn.close()
