"""Mediated devices (vGPUs) a stopped run left, on a REAL libvirtd: the listing of stopped devices the daemon answers,
and the client's faults on the record an assign writes in the VM before creating a device (kvm.record-mdev-intent) and
on a release's removal, between the define that records it and the define that takes the record out.

The suite's daemon has no mdev parent and no mdevctl (test_kvm_hotplug_mdev_faults_libvirtd.py says why), so no
device is ever made or removed here: what is checked is what the VM's definition records, what `status` shows from
it, and that the same command, or a release, converges. The card and its share are added to the facts the real
backend reads, as in test_kvm_hotplug_mdev_faults_libvirtd.py and test_kvm_share_faults_libvirtd.py.
"""

# The fault matrix's proxy fixture is imported below and taken as a parameter here, which ruff reads as a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.request import ReleaseRequest  # noqa: E402
from gpupass.core.errors import OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.libvirt_proxy import CONNECT_LIST_ALL_NODE_DEVICES, DOMAIN_DEFINE_XML  # noqa: E402
from test_kvm_backend_libvirtd import define, inactive_xml, q35  # noqa: E402
from test_kvm_fault_matrix_libvirtd import proxy  # noqa: E402,F401
from test_kvm_hotplug_mdev_faults_libvirtd import (VM, KvmBackendWithACard, killed_with, mdevs,  # noqa: E402
                                                   plan_share, release_share_intent, unfinished)
from test_kvm_share_faults_libvirtd import CARD, MDEV, KvmBackendWithAVgpu  # noqa: E402

SHARE_VM = "gp-sf-1"  # test_kvm_share_faults_libvirtd's VM, which KvmBackendWithAVgpu's plans name


def test_the_daemon_lists_stopped_mediated_devices_by_flag(libvirtd_uri, libvirt_conn):
    """libvirt's node device driver takes VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE (nodeConnectListAllNodeDevices checks
    VIR_CONNECT_LIST_NODE_DEVICES_FILTERS_ALL, libvirt 9.0.0 src/node_device/node_device_driver.c line 218): the
    backend reads stopped devices from it. None here (no mdevctl)."""
    flags = libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV | libvirt.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE
    assert libvirt_conn.listAllDevices(flags) == []
    with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
        assert backend._inactive_mdevs() == frozenset() and backend._inactive_listing is True


@pytest.fixture
def stopped(libvirt_conn):
    free = define(libvirt_conn, q35(VM))
    yield free
    libvirt_conn.lookupByName(VM).undefine()


def test_a_client_killed_with_the_record_of_its_vgpu_on_the_wire_leaves_it_shown_and_a_release_clears_it(
        libvirtd_uri, libvirt_conn, proxy, stopped):
    """A real gpupass process killed (SIGKILL) with the define recording the device it is about to create on the wire;
    the daemon then carries the define out: the VM holds the record and nothing else changed, status shows it with
    both commands, and the release of the card takes it out: the VM exactly as it was."""
    killed_with(proxy, DOMAIN_DEFINE_XML, "plan_share", backend="KvmBackendWithACard")
    left = inactive_xml(libvirt_conn, VM)
    (intent,) = domxml.mdev_intents(domxml.parse(left))
    assert domxml.comparable(left) == domxml.comparable(stopped) and mdevs(libvirt_conn) == []
    (note,), _ = unfinished(libvirtd_uri)
    assert f"it was creating mediated device {intent.uuid}" in note and "which is not on the host" in note, note
    release_share_intent(libvirtd_uri)
    assert inactive_xml(libvirt_conn, VM) == stopped and unfinished(libvirtd_uri) == ((), [])


def test_a_client_killed_with_the_undo_of_its_record_on_the_wire_leaves_the_vm_exactly_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, stopped):
    """The daemon refuses the device (no mdevctl), the run takes its record out again, and is killed (SIGKILL) with
    that define on the wire; the daemon carries it out: the VM exactly as it was, nothing for status to show."""
    killed_with(proxy, DOMAIN_DEFINE_XML, "plan_share", backend="KvmBackendWithACard", skip=1)
    assert inactive_xml(libvirt_conn, VM) == stopped and unfinished(libvirtd_uri) == ((), [])


@pytest.mark.parametrize("step", ["the-record", "its-undo"])
def test_a_lost_reply_on_the_record_of_a_vgpu_or_its_undo_is_read_back_and_the_vm_is_exactly_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, stopped, step):
    """The reply to the define recording the device (the-record), or to the define taking it out after the daemon
    refused the device (its-undo), dropped after the daemon carried it out. The run reads the VM again over a new
    connection: the record there is taken out (no device was made), the record gone is done. Reported rolled back,
    the VM exactly as it was; the same assign again meets the daemon's own refusal, rolled back too."""
    with KvmBackendWithACard(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_share(backend)
        proxy.drop_reply_to(DOMAIN_DEFINE_XML, skip=0 if step == "the-record" else 1)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert proxy.dropped.is_set()
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    assert inactive_xml(libvirt_conn, VM) == stopped and unfinished(libvirtd_uri) == ((), [])
    with KvmBackendWithACard(Target(uri=libvirtd_uri, name="session")) as backend:
        with pytest.raises(OperationFailed) as again:
            execute(backend, plan_share(backend))
    assert again.value.rolled_back is True and inactive_xml(libvirt_conn, VM) == stopped


# -- the second window: a release stopped between the define that records the removal and the define that ends it ----
def plan_release(backend):
    plan = make_plan(backend, backend.inventory(), ReleaseRequest(SHARE_VM, (CARD.address,)), default_registry())
    assert [s.action for s in plan.steps if s.writes] == ["kvm.define-domain", "kvm.remove-mdev",
                                                          "kvm.clear-mdev-intent"], plan.steps
    return plan


@pytest.fixture
def given(libvirt_conn):
    """SHARE_VM holding MDEV, which the record says gpupass created (the daemon accepts a definition naming a device it
    does not hold: it looks it up at the domain's start). -> its definition without the device."""
    free = define(libvirt_conn, q35(SHARE_VM))
    define(libvirt_conn, domxml.add_mdev(free, MDEV, created=True).xml)
    yield free
    libvirt_conn.lookupByName(SHARE_VM).undefine()


def test_a_client_killed_between_recording_a_removal_and_ending_it_leaves_it_shown_and_the_release_again_finishes(
        libvirtd_uri, libvirt_conn, proxy, given):
    """A real gpupass release killed (SIGKILL) with the removal's first call on the device on the wire (the listing it
    finds the device by): the VM no longer holds the device and records its removal, status shows it with the command
    that finishes it, and the same release finishes it: the VM exactly without the device and its record."""
    killed_with(proxy, CONNECT_LIST_ALL_NODE_DEVICES, "plan_release", backend="KvmBackendWithAVgpu", skip=1,
                module="test_kvm_mdev_intents_libvirtd")
    left = inactive_xml(libvirt_conn, SHARE_VM)
    assert domxml.read_facts(left).mdevs == ()
    assert [(i.uuid, i.removing) for i in domxml.mdev_intents(domxml.parse(left))] == [(MDEV, True)]
    with KvmBackendWithAVgpu(Target(uri=libvirtd_uri, name="session")) as backend:
        facts = backend.inventory()
        (note,) = facts.find_vm(SHARE_VM).unfinished
        plan = make_plan(backend, facts, ReleaseRequest(SHARE_VM, (CARD.address,)), default_registry())
        assert [s.action for s in plan.steps if s.writes] == ["kvm.remove-mdev", "kvm.clear-mdev-intent"]
        execute(backend, plan)
    assert f"it was removing mediated device {MDEV}" in note and f"`gpupass release HOST {SHARE_VM} {CARD.address}` " \
        "finishes it" in note, note
    assert inactive_xml(libvirt_conn, SHARE_VM) == given
    with KvmBackendWithAVgpu(Target(uri=libvirtd_uri, name="session")) as backend:
        assert backend.inventory().find_vm(SHARE_VM).unfinished == ()
