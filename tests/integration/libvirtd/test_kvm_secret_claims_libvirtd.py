"""GPU claims as libvirt secrets (backends/kvm/secretclaims.py) on a REAL libvirtd: the daemon refuses a
second secret for one GPU, so an assign costs a few calls whatever the number of domains; a claim left by
a stopped run (or a GPU taken off its VM by hand) is taken over; a run whose claim was taken over undoes
its change; a secret that is not gpupass's is never taken over. Processes racing: test_kvm_claims_libvirtd.py.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml, secretclaims  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.pci import PciAddress  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest  # noqa: E402
from gpupass.core.errors import Conflict  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.race import RacePool  # noqa: E402
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402

# A T4 of its own: claims are host-wide, and the other tests on this daemon assign the T4 at 41:00.0.
THE_GPU = dataclasses.replace(T4, address=PciAddress.parse("0000:43:00.0"))
GPU = str(THE_GPU.address)


def open_backend(uri):
    return KvmBackend(Target(uri=uri, name="session"))


def planned(backend, vm, request=None):
    plan = make_plan(backend, with_gpus(backend.inventory(), THE_GPU), request or AssignmentRequest(vm, (THE_GPU.address,)),
                     default_registry())
    assert not plan.blocked, plan.findings
    return plan


def claim_now(conn):
    try:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(GPU))
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        return None
    return secretclaims.from_xml(secret.XMLDesc(0)) or "foreign"


def holds(conn, vm):
    return THE_GPU.address in domxml.read_facts(inactive_xml(conn, vm)).hostdevs


@pytest.fixture
def vms(libvirt_conn):
    names = ["gp-sc-1", "gp-sc-2", "gp-sc-3"]
    before = {vm: define(libvirt_conn, q35(vm)) for vm in names}
    yield before
    if claim_now(libvirt_conn) is not None:  # leave the daemon's GPU free for the next test
        libvirt_conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME,
                                         secretclaims.usage_id(GPU)).undefine()
    for vm in names:
        libvirt_conn.lookupByName(vm).undefine()


def test_an_assign_claims_with_a_secret_in_a_few_calls_and_its_release_removes_it(libvirtd_uri, libvirt_conn, vms):
    for extra in range(30):  # more domains change nothing in what the assign costs
        libvirt_conn.defineXML(q35(f"gp-sc-extra-{extra}"))
    try:
        with open_backend(libvirtd_uri) as backend:
            plan = planned(backend, "gp-sc-1")
            before = backend.round_trips
            execute(backend, plan)
            # guard (lookup + XMLDesc), secretDefineXML, defineXML, secretLookupByUsage, read-back (3)
            assert backend.round_trips - before == 8
            claim = claim_now(libvirt_conn)
            assert claim.vm == "gp-sc-1" and claim.vm_uuid == domxml.read_facts(vms["gp-sc-1"]).uuid
            assert holds(libvirt_conn, "gp-sc-1") and domxml.claims_of(inactive_xml(libvirt_conn, "gp-sc-1"))[0] == []
            execute(backend, planned(backend, "gp-sc-1", ReleaseRequest("gp-sc-1")))
            assert claim_now(libvirt_conn) is None and inactive_xml(libvirt_conn, "gp-sc-1") == vms["gp-sc-1"]
    finally:
        for extra in range(30):
            libvirt_conn.lookupByName(f"gp-sc-extra-{extra}").undefine()


def test_a_claim_held_by_a_vm_that_holds_the_gpu_makes_a_later_run_lose_at_once(libvirtd_uri, libvirt_conn, vms):
    with open_backend(libvirtd_uri) as late, open_backend(libvirtd_uri) as early:
        late_plan = planned(late, "gp-sc-2")  # planned while the GPU was free
        execute(early, planned(early, "gp-sc-1"))
        started = time.monotonic()
        with pytest.raises(Conflict) as caught:
            execute(late, late_plan)
        assert time.monotonic() - started < late._claim_takeover_s
        assert caught.value.rolled_back and "claimed by VM 'gp-sc-1'" in caught.value.message
        assert inactive_xml(libvirt_conn, "gp-sc-2") == vms["gp-sc-2"] and holds(libvirt_conn, "gp-sc-1")


def test_a_claim_left_by_a_stopped_run_is_taken_over(libvirtd_uri, libvirt_conn, vms):
    """A run killed between its claim and its define (or a GPU taken off its VM by hand) leaves a claim whose
    VM does not hold the GPU: another run waits _claim_takeover_s for it at most, then takes it over."""
    stale = secretclaims.new(GPU, "gp-sc-1", domxml.read_facts(vms["gp-sc-1"]).uuid, "t", "a killed run", time.time())
    libvirt_conn.secretDefineXML(secretclaims.to_xml(stale))
    with open_backend(libvirtd_uri) as backend:
        backend._claim_takeover_s = 0.5
        started = time.monotonic()
        execute(backend, planned(backend, "gp-sc-2"))
        assert time.monotonic() - started >= 0.5
    claim = claim_now(libvirt_conn)
    assert claim.vm == "gp-sc-2" and claim.uuid != stale.uuid and holds(libvirt_conn, "gp-sc-2")


def test_a_run_whose_claim_was_taken_over_undoes_its_change(libvirtd_uri, libvirt_conn, vms):
    """A run stalled between its claim and its define (longer than _claim_takeover_s) finds after its define
    that its claim is another run's: it defines its old XML again and exits with a conflict."""
    slow = open_backend(libvirtd_uri)
    slow_plan = planned(slow, "gp-sc-1")
    go_on, stalled = threading.Event(), threading.Event()
    define_now = slow._define

    def stall_then_define(xml, action):
        stalled.set()
        go_on.wait(30)
        return define_now(xml, action)

    slow._define = stall_then_define
    outcome = {}

    def run():
        try:
            execute(slow, slow_plan)
            outcome["slow"] = "applied"
        except Conflict as error:
            outcome["slow"] = error

    thread = threading.Thread(target=run)
    thread.start()
    assert stalled.wait(30)
    with open_backend(libvirtd_uri) as fast:
        fast._claim_takeover_s = 0.3
        execute(fast, planned(fast, "gp-sc-2"))  # takes the stalled run's claim over and wins
    go_on.set()
    thread.join(30)
    slow.close()
    assert isinstance(outcome["slow"], Conflict) and outcome["slow"].rolled_back
    assert "claimed 0000:43:00.0 while this run was assigning it" in outcome["slow"].message
    assert not holds(libvirt_conn, "gp-sc-1") and holds(libvirt_conn, "gp-sc-2")
    assert claim_now(libvirt_conn).vm == "gp-sc-2"


def test_a_secret_that_is_not_gpupass_s_is_never_taken_over(libvirtd_uri, libvirt_conn, vms):
    libvirt_conn.secretDefineXML(
        "<secret ephemeral='no' private='no'><description>someone else's</description><usage type='volume'>"
        f"<volume>{secretclaims.usage_id(GPU)}</volume></usage></secret>")
    with open_backend(libvirtd_uri) as backend:
        backend._claim_takeover_s = 0.1
        with pytest.raises(Conflict) as caught:
            execute(backend, planned(backend, "gp-sc-1"))
    assert caught.value.rolled_back and claim_now(libvirt_conn) == "foreign"
    assert inactive_xml(libvirt_conn, "gp-sc-1") == vms["gp-sc-1"]


def assign_in_a_worker(uri, vm):
    """One worker's run in a RacePool (module-level: the spawned worker imports it by name): its own new connection
    to the daemon, a read, a plan; the apply closes the connection."""
    backend = open_backend(uri)
    plan = planned(backend, vm)

    def go():
        with backend:
            return execute(backend, plan)
    return go


def test_identical_concurrent_assigns_on_the_daemon_add_the_gpu_once(libvirtd_uri, libvirt_conn, vms):
    """Three processes (support.race.RacePool: spawned, never forked from the threaded pytest process), each on its
    own connection, plan the same assign, wait at one barrier and apply at the same moment."""
    with RacePool(3) as pool:
        runs = pool.round(functools.partial(assign_in_a_worker, libvirtd_uri), ["gp-sc-3"] * 3)
    # each process's own outcome: exactly one did the work; the others found the GPU claimed by the VM that
    # holds it now (exit 6, nothing of theirs left) or, planned after it, nothing to do
    assert [run.kind for run in runs].count("applied") == 1, runs
    assert all(run.kind == "conflict" and run.exit_code == 6 and run.rolled_back is True
               or run.kind == "nothing-to-do" and run.exit_code == 0 for run in runs if run.kind != "applied"), runs
    stored = inactive_xml(libvirt_conn, "gp-sc-3")
    assert [a for _, a in domxml.pci_hostdevs(domxml.parse(stored))] == [THE_GPU.address]
    assert claim_now(libvirt_conn).vm == "gp-sc-3"


def test_status_says_which_vm_the_claim_gives_a_gpu_held_twice_to(libvirtd_uri, libvirt_conn, vms):
    """A GPU on two VMs (a run stopped after its define and before undoing it, or a hand edit): the secret
    claim says which one keeps it."""
    import xml.etree.ElementTree as ET

    with open_backend(libvirtd_uri) as backend:
        execute(backend, planned(backend, "gp-sc-1"))
    hostdev = ET.fromstring(inactive_xml(libvirt_conn, "gp-sc-1")).find("devices/hostdev")
    other = ET.fromstring(inactive_xml(libvirt_conn, "gp-sc-2"))
    other.find("devices").append(hostdev)
    libvirt_conn.defineXML(ET.tostring(other, encoding="unicode"))  # by hand: no claim
    with open_backend(libvirtd_uri) as backend:
        facts = backend.inventory()
    assert facts.find_vm("gp-sc-1").unfinished == ()
    note, = facts.find_vm("gp-sc-2").unfinished
    assert f"holds {GPU}, which VM 'gp-sc-1' holds too and gpupass's claim gives to it" in note
    assert f"`gpupass release HOST gp-sc-2 {GPU}`" in note
