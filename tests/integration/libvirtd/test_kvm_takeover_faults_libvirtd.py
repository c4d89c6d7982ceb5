"""The KVM rows of the fault matrix (docs/faults.md) on the claim removal of a run that TAKES OVER A STALE CLAIM, on a
real libvirtd, with three runs:

* run A, a real gpupass process, is killed with its claim (secretDefineXML) on the wire: the daemon makes the claim,
  and A's VM never gets its define -- a stale claim (its VM does not hold the GPU);
* run B assigns the GPU to its own VM: it finds A's claim stale and removes it (virSecretUndefine by its UUID) to take
  it over -- and that removal is faulted: its reply lost, or B (a real process) killed with it on the wire;
* run C, a real gpupass process, assigns the GPU to a third VM straight at the daemon, racing B: while B's removal is
  held at the proxy, or between the removal and B's own claim.

The faults and the interleavings come from the proxy in front of the daemon's socket (tests/support/libvirt_proxy.py),
armed in order: no sleep decides an outcome. After each, the host is exactly what one finished run leaves (the GPU on
one VM with its claim, the others as they were), or exactly as before B with A's leftover claim cleared (what any
assign of the GPU does to a stale claim: docs/faults.md); `status` has nothing to say, and the same assign again
converges: it gives the GPU, or is refused by preflight naming the VM that holds it (exit 3, nothing changed).
"""

# The fault matrix's proxy fixture is imported below and taken as a parameter here, which ruff reads as a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml, secretclaims  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.pci import PciAddress  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest  # noqa: E402
from gpupass.core.errors import Conflict, GpupassError, PreflightFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.libvirt_proxy import SECRET_DEFINE_XML, SECRET_UNDEFINE, kill_when_held, start_python  # noqa: E402
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402
from test_kvm_fault_matrix_libvirtd import proxy  # noqa: E402,F401

# A GPU of its own: claims are host-wide, and the other tests on this daemon claim 41:00.0 to 47:00.0.
THE_GPU = dataclasses.replace(T4, address=PciAddress.parse("0000:48:00.0"))
GPU = str(THE_GPU.address)
A, B, C = "gp-to-a", "gp-to-b", "gp-to-c"
TAKEOVER_S = 0.3  # how old a claim on a GPU its VM does not hold must be before a run takes it over


def plan_for(backend, vm):
    plan = make_plan(backend, with_gpus(backend.inventory(), THE_GPU), AssignmentRequest(vm, (THE_GPU.address,)),
                     default_registry())
    assert not plan.blocked, plan.findings
    return plan


def assign(uri, vm):
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        backend._claim_takeover_s = TAKEOVER_S
        return execute(backend, plan_for(backend, vm))


# A gpupass assign in a process of its own, which prints its outcome as the CLI reports it (kind, exit code,
# rolled_back) on its last line.
_CHILD = """
import json, sys
sys.path[:0] = {paths!r}
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.errors import GpupassError
from gpupass.core.service import execute
from gpupass.core.target import Target
from test_kvm_takeover_faults_libvirtd import plan_for
try:
    with KvmBackend(Target(uri={uri!r}, name="run")) as backend:
        backend._claim_takeover_s = {takeover_s!r}
        execute(backend, plan_for(backend, {vm!r}))
    print(json.dumps({{"kind": "applied", "exit_code": 0}}))
except GpupassError as error:
    print(json.dumps({{"kind": error.kind, "exit_code": error.exit_code, "rolled_back": getattr(error, "rolled_back", None),
                      "message": error.message}}))
"""


def start(uri, vm):
    here = Path(__file__).resolve().parent
    return start_python(_CHILD.format(paths=[str(here), str(here.parents[1])], uri=uri, vm=vm, takeover_s=TAKEOVER_S))


def outcome(running):
    """The last line a child printed, as a dict (the run's kind and exit code)."""
    output = running.communicate(timeout=120)[0]
    assert running.returncode == 0, output
    return json.loads(output.strip().splitlines()[-1])


def claim_now(conn):
    try:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(GPU))
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        return None
    return secretclaims.from_xml(secret.XMLDesc(0))


def holders(conn):
    return [vm for vm in (A, B, C) if THE_GPU.address in domxml.read_facts(inactive_xml(conn, vm)).hostdevs]


def status(uri):
    """What `gpupass status` lists: per VM (the unfinished notes) and the host's own notes on this GPU."""
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        facts = backend.inventory()
    return ({vm.name: vm.unfinished for vm in facts.vms if vm.name in (A, B, C)},
            [note for note in facts.host.unfinished if GPU in note])


@pytest.fixture
def vms(libvirtd_uri, libvirt_conn, proxy):
    """Three powered-off VMs and run A's stale claim: A, a real gpupass process, killed with its claim on the wire
    (the daemon makes it; A's VM never gets its define). -> the VMs' definitions and A's claim, which is older than
    TAKEOVER_S when the test starts (a precondition, not a race: any run may take it over then)."""
    free = {vm: define(libvirt_conn, q35(vm)) for vm in (A, B, C)}
    proxy.hold_call_to(SECRET_DEFINE_XML)
    kill_when_held(proxy, start(proxy.uri, A))
    stale = claim_now(libvirt_conn)
    assert stale is not None and stale.vm == A and holders(libvirt_conn) == []
    time.sleep(max(0.0, stale.at + 2 * TAKEOVER_S - time.time()))
    yield free, stale
    if (claim := claim_now(libvirt_conn)) is not None:
        libvirt_conn.secretLookupByUUIDString(claim.uuid).undefine()
    for name in (A, B, C):
        libvirt_conn.lookupByName(name).undefine()


def exactly(conn, free, holder):
    """`holder` holds the GPU with its claim (None: no VM holds it and there is no claim); the others are as they were,
    byte for byte."""
    claim = claim_now(conn)
    assert (claim.vm if claim else None) == holder
    assert holders(conn) == ([holder] if holder else [])
    for vm in (A, B, C):
        if vm != holder:
            assert inactive_xml(conn, vm) == free[vm], vm


def loses_to(uri, conn, vm, holder, free):
    """The same assign of `vm` again, as the admin runs it (planned from the host now), after `holder` holds the GPU:
    refused by preflight (exit 3), naming the VM that holds it; nothing changed."""
    before = claim_now(conn)
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        plan = make_plan(backend, with_gpus(backend.inventory(), THE_GPU), AssignmentRequest(vm, (THE_GPU.address,)),
                         default_registry())
        with pytest.raises(PreflightFailed) as caught:
            execute(backend, plan)
    assert caught.value.exit_code == 3
    assert [(f.code, holder in f.message) for f in plan.findings if f.blocks] == [("gpu-assigned-elsewhere", True)]
    assert claim_now(conn) == before and inactive_xml(conn, vm) == free[vm]


# -- run B killed with its removal of the stale claim on the wire --------------------------------------------------
def test_b_killed_with_its_takeover_on_the_wire_while_c_takes_the_claim_over_leaves_c_holding_the_gpu(
        libvirtd_uri, libvirt_conn, proxy, vms):
    """B's removal of A's claim is held; B is killed (SIGKILL); C, a real process, takes A's claim over and assigns the
    GPU; only then does B's removal reach the daemon. It names A's claim by UUID, which is gone: C's newer claim is
    left alone (virSecretUndefine finds the secret by UUID). C holds the GPU with its claim, A and B are as they were,
    status has nothing to say, and B's and A's same assign again are refused (C holds the GPU), changing nothing."""
    free, stale = vms
    proxy.hold_call_to(SECRET_UNDEFINE)
    racing = []
    kill_when_held(proxy, start(proxy.uri, B), meanwhile=lambda: racing.append(outcome(start(libvirtd_uri, C))))
    (c,) = racing
    assert c["kind"] == "applied", c
    exactly(libvirt_conn, free, C)
    assert claim_now(libvirt_conn).uuid != stale.uuid
    assert status(libvirtd_uri) == ({A: (), B: (), C: ()}, [])
    loses_to(libvirtd_uri, libvirt_conn, B, C, free)
    loses_to(libvirtd_uri, libvirt_conn, A, C, free)
    exactly(libvirt_conn, free, C)


def test_b_killed_with_its_takeover_on_the_wire_leaves_the_gpu_free_and_c_then_assigns_it_at_once(
        libvirtd_uri, libvirt_conn, proxy, vms):
    """B is killed with its removal of A's claim on the wire, which the daemon then carries out: B's only write. The
    host is as before B with A's leftover claim cleared (what any assign of the GPU does to it): no claim, no VM holds
    the GPU, status has nothing to say. C then assigns it without waiting for any takeover; B's same assign again
    is refused (C holds the GPU)."""
    free, _ = vms
    proxy.hold_call_to(SECRET_UNDEFINE)
    kill_when_held(proxy, start(proxy.uri, B))
    exactly(libvirt_conn, free, None)
    assert status(libvirtd_uri) == ({A: (), B: (), C: ()}, [])
    c = outcome(start(libvirtd_uri, C))
    assert c["kind"] == "applied", c
    exactly(libvirt_conn, free, C)
    loses_to(libvirtd_uri, libvirt_conn, B, C, free)


# -- run B's removal of the stale claim with its reply lost ------------------------------------------------------------
def b_through_the_proxy(proxy, failures):
    def run():
        try:
            assign(proxy.uri, B)
            failures.append("applied")
        except GpupassError as error:
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_b_s_takeover_reply_lost_after_c_took_the_claim_over_is_read_again_and_reported_as_the_conflict(
        libvirtd_uri, libvirt_conn, proxy, vms):
    """B's removal of A's claim is held while C, a real process, takes the claim over and assigns the GPU; then B's
    removal reaches the daemon (gone by its UUID: nothing removed) and its reply is lost. Before: B reported a lost
    connection (exit 1, "the VM is as it was"). The removal is asked once more over a new connection, finds C's claim
    (not A's: left alone), and B's claim is then refused: B reports the conflict it is (exit 6), nothing changed."""
    free, _ = vms
    proxy.hold_call_to(SECRET_UNDEFINE)
    proxy.drop_reply_to(SECRET_UNDEFINE)
    failures = []
    b = b_through_the_proxy(proxy, failures)
    try:
        assert proxy.held.wait(60), "B's removal of the stale claim never reached the proxy"
        c = outcome(start(libvirtd_uri, C))
    finally:
        proxy.release()
        b.join(60)
    assert c["kind"] == "applied", c
    error, = failures
    assert proxy.dropped.is_set()
    assert isinstance(error, Conflict) and error.rolled_back is True and error.exit_code == 6, error
    assert f"claimed by VM '{C}'" in error.message and "nothing was changed" in error.message, error.message
    exactly(libvirt_conn, free, C)
    assert status(libvirtd_uri) == ({A: (), B: (), C: ()}, [])
    loses_to(libvirtd_uri, libvirt_conn, B, C, free)


def test_b_s_takeover_reply_lost_then_c_claims_first_is_read_again_and_reported_as_the_conflict(
        libvirtd_uri, libvirt_conn, proxy, vms):
    """B's removal of A's claim is carried out and its reply lost; before B claims the GPU (its claim held at the
    proxy), C, a real process, finds it free and assigns it. B asks the removal once more over a new connection (done:
    A's claim is gone, C's is left alone), then its claim is refused: the conflict (exit 6), nothing of B's left."""
    free, _ = vms
    proxy.drop_reply_to(SECRET_UNDEFINE)
    proxy.hold_call_to(SECRET_DEFINE_XML, skip=1)  # B's first claim is refused (A's is there); the next is held
    failures = []
    b = b_through_the_proxy(proxy, failures)
    try:
        assert proxy.held.wait(60), "B never asked for its claim again after its takeover"
        assert proxy.dropped.is_set() and claim_now(libvirt_conn) is None  # A's claim removed, B's not made yet
        c = outcome(start(libvirtd_uri, C))
    finally:
        proxy.release()
        b.join(60)
    assert c["kind"] == "applied", c
    error, = failures
    assert isinstance(error, Conflict) and error.rolled_back is True and error.exit_code == 6, error
    assert f"claimed by VM '{C}'" in error.message, error.message
    exactly(libvirt_conn, free, C)
    assert status(libvirtd_uri) == ({A: (), B: (), C: ()}, [])


def test_b_s_takeover_reply_lost_with_no_other_run_finishes_b_s_assign(libvirtd_uri, libvirt_conn, proxy, vms):
    """B's removal of A's claim is carried out and its reply lost, and nobody races: asked once more over a new
    connection it finds the claim gone and goes on. Before: B stopped with a lost connection (exit 1, "the VM is as it
    was") after its only write, the removal of A's claim. Now B's assign is done: B holds the GPU with its claim."""
    free, _ = vms
    proxy.drop_reply_to(SECRET_UNDEFINE)
    failures = []
    b_through_the_proxy(proxy, failures).join(60)
    assert proxy.dropped.is_set()
    assert failures == ["applied"], failures
    exactly(libvirt_conn, free, B)
    assert status(libvirtd_uri) == ({A: (), B: (), C: ()}, [])
    with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
        assert plan_for(backend, B).steps == ()  # the same assign again has nothing to do
    loses_to(libvirtd_uri, libvirt_conn, C, B, free)
