"""A hot-plug the REAL daemon carries out with its reply lost: the KVM backend's hot-plug code path (attach or detach
with VIR_DOMAIN_AFFECT_LIVE, the live definition read back over a new connection, the undo read back the same way)
run against a device this machine's libvirtd can plug into a running domain and take out of it.

A GPU cannot be that device here. A live <hostdev type='pci'> needs VFIO: libvirt 9.0.0 src/qemu/qemu_hostdev.c,
qemuHostdevPreparePCIDevicesCheckSupport (lines 157-203) refuses it with VIR_ERR_CONFIG_UNSUPPORTED "host doesn't
support passthrough of host PCI devices" unless qemuHostdevHostSupportsPassthroughVFIO (lines 142-154) finds an IOMMU
(virHostHasIOMMU, src/util/virutil.c 1431-1443: a non-empty /sys/kernel/iommu_groups/) and /dev/vfio/vfio
(QEMU_DEV_VFIO, src/qemu/qemu_domain.h:82); this machine has neither. The libvirt test driver has no
domainAttachDeviceFlags or domainDetachDeviceFlags at all (libvirt 9.0.0 src/test/test_driver.c, testHypervisorDriver)
and runs inside the client, with no connection to lose.

So the device is a USB tablet (<input type='tablet' bus='usb'/>): libvirt 9.0's QEMU driver hot-plugs and unplugs
input devices (src/qemu/qemu_hotplug.c, qemuDomainAttachInputDevice; qemuDomainDetachPrepInput), and a USB device
leaves QEMU at once, with no guest OS to ask (the domain here idles in its firmware). The test's backend is the
product's KvmBackend with two things changed: the device its hot-plug steps carry, and how that device is told in
the live definition (`_device_in`; the product tells a <hostdev> by the host PCI address of its <source>, checked on
real libvirt output in tests/integration/kvm/test_kvm_testdriver.py). Everything else -- the plan, the apply, the
core's read-back after a lost connection, the undo and its own read-back, the report -- is the product's, on the real
daemon, through the proxy that loses replies (tests/support/libvirt_proxy.py).
"""

# The fault matrix's proxy fixture is imported below and taken as a parameter here, which ruff reads as a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml, secretclaims  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.backends.kvm.steps import Hotplug  # noqa: E402
from gpupass.core import records  # noqa: E402
from gpupass.core.domain.pci import PciAddress  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseOptions, ReleaseRequest  # noqa: E402,E501
from gpupass.core.errors import ConnectionFailed, OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.libvirt_proxy import (DOMAIN_ATTACH_DEVICE_FLAGS, DOMAIN_DETACH_DEVICE_FLAGS,  # noqa: E402
                                   DOMAIN_GET_XML_DESC)
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402
from test_kvm_fault_matrix_libvirtd import proxy  # noqa: E402,F401

THE_GPU = records.replace(T4, address=PciAddress.parse("0000:4d:00.0"))  # claims are host-wide: a GPU of its own
GPU = str(THE_GPU.address)
VM = "gp-hr-1"
TABLET = "<input type='tablet' bus='usb'/>"


class KvmBackendPluggingATablet(KvmBackend):
    """The product's backend whose hot-plug steps carry a USB tablet instead of the GPU's <hostdev>."""

    def _hotplug_step(self, vm, function, attach):
        step = super()._hotplug_step(vm, function, attach)
        return records.replace(step, payload=Hotplug(vm, TABLET, attach))

    @staticmethod
    def _device_in(live_xml, device_xml):
        assert device_xml == TABLET
        return tablets(live_xml) == 1

    def _live_differences(self, domain, facts):
        # The stand-in takes the GPU's place in the running VM, so the GPU itself is never in its live definition: the
        # GPU counts as held live while the tablet is plugged in, which is the product's comparison of live and stored
        # definitions (tested on a GPU's <hostdev> on the test driver: test_kvm_testdriver.py) for the stand-in.
        live = tablets(domain.XMLDesc(0)) == 1
        stored = THE_GPU.address in facts.hostdevs
        return ((THE_GPU.address,) if live and not stored else ()), ((THE_GPU.address,) if stored and not live else ())


def tablets(xml: str) -> int:
    return sum(1 for i in ET.fromstring(xml).iter("input") if (i.get("type"), i.get("bus")) == ("tablet", "usb"))


def plan(backend, operation):
    facts = with_gpus(backend.inventory(), THE_GPU)
    request = AssignmentRequest(VM, (THE_GPU.address,), AssignOptions(live=True)) if operation == "assign" else \
        ReleaseRequest(VM, (THE_GPU.address,), ReleaseOptions(live=True))
    made = make_plan(backend, facts, request, default_registry())
    assert not made.blocked, made.findings
    verb = "kvm.hotplug" if operation == "assign" else "kvm.hotunplug"
    assert [s.action for s in made.steps if s.writes] == [verb, "kvm.define-domain"]
    return made


def run(uri, operation):
    with KvmBackendPluggingATablet(Target(uri=uri, name="session")) as backend:
        return execute(backend, plan(backend, operation))


def claim_now(conn):
    try:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(GPU))
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        return None
    return secretclaims.from_xml(secret.XMLDesc(0))


@pytest.fixture
def running(libvirt_conn):
    """The VM defined and started (TCG, no disk: it idles in its firmware); -> its stored definition."""
    stored = define(libvirt_conn, q35(VM))
    domain = libvirt_conn.lookupByName(VM)
    domain.create()
    assert tablets(domain.XMLDesc(0)) == 0
    yield stored
    if (claim := claim_now(libvirt_conn)) is not None:
        libvirt_conn.secretLookupByUUIDString(claim.uuid).undefine()
    if domain.isActive():
        domain.destroy()
    domain.undefine()


def live(conn) -> str:
    return conn.lookupByName(VM).XMLDesc(0)


def test_a_hotplug_carried_out_with_its_reply_lost_is_read_back_and_undone(libvirtd_uri, libvirt_conn, proxy,
                                                                             running):
    """The daemon plugs the device in and the reply is lost with the connection: the run cannot know from its call.
    It reads the live definition again over a new connection, finds the device there, unplugs it and reports the VM
    as it was (rolled back); live and stored definitions are exactly as before, no claim; the same assign again
    converges (plugged in once, the GPU in the stored definition with its claim)."""
    before = live(libvirt_conn)
    with KvmBackendPluggingATablet(Target(uri=proxy.uri, name="proxied")) as backend:
        made = plan(backend, "assign")
        proxy.drop_reply_to(DOMAIN_ATTACH_DEVICE_FLAGS)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, made)
    assert proxy.dropped.is_set()
    assert isinstance(caught.value.__cause__, ConnectionFailed), caught.value.__cause__
    assert caught.value.rolled_back is True, caught.value.message
    assert "the failed step had gone through and was undone; the VM is as it was" in caught.value.message
    assert live(libvirt_conn) == before and inactive_xml(libvirt_conn, VM) == running
    assert claim_now(libvirt_conn) is None
    run(libvirtd_uri, "assign")
    assert tablets(live(libvirt_conn)) == 1
    assert domxml.read_facts(inactive_xml(libvirt_conn, VM)).hostdevs == (THE_GPU.address,)
    assert claim_now(libvirt_conn).vm == VM


def test_a_hotplug_whose_reply_and_whose_undos_reply_are_lost_is_read_back_twice_and_reported_undone(
        libvirtd_uri, libvirt_conn, proxy, running):
    """Two lost replies in a row: the hot-plug's, then its undo's (the hot-unplug, carried out too). The undo is read
    back over another new connection (KvmBackend._undo_hotplug): the device is gone, so the undo is done and the VM
    is reported, and is, exactly as it was -- not "undo by hand", as it was before the undo was read back."""
    before = live(libvirt_conn)
    with KvmBackendPluggingATablet(Target(uri=proxy.uri, name="proxied")) as backend:
        made = plan(backend, "assign")
        proxy.drop_reply_to(DOMAIN_ATTACH_DEVICE_FLAGS)
        proxy.drop_reply_to(DOMAIN_DETACH_DEVICE_FLAGS)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, made)
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    assert "undo by hand" not in caught.value.message
    assert live(libvirt_conn) == before and inactive_xml(libvirt_conn, VM) == running
    assert claim_now(libvirt_conn) is None
    run(libvirtd_uri, "assign")
    assert tablets(live(libvirt_conn)) == 1


def test_a_hotplug_whose_undo_cannot_be_read_back_is_reported_not_undone_with_the_step_named(
        libvirtd_uri, libvirt_conn, proxy, running):
    """Three lost replies: the hot-plug's, its undo's, and the read that would tell whether the undo went through.
    gpupass cannot tell and says so: not rolled back, the step and its undo named, `status` the next command. (The
    daemon did unplug it: the VM is as it was.) The same assign again converges."""
    before = live(libvirt_conn)
    with KvmBackendPluggingATablet(Target(uri=proxy.uri, name="proxied")) as backend:
        made = plan(backend, "assign")
        proxy.drop_reply_to(DOMAIN_ATTACH_DEVICE_FLAGS)
        proxy.drop_reply_to(DOMAIN_DETACH_DEVICE_FLAGS)
        proxy.drop_reply_to(DOMAIN_GET_XML_DESC, skip=1)  # the core's read-back passes, the undo's is lost
        with pytest.raises(OperationFailed) as caught:
            execute(backend, made)
    assert caught.value.rolled_back is False, caught.value.message
    assert f"these steps could not be undone: hot-plug {GPU}" in caught.value.message, caught.value.message
    assert "undo by hand: hot-unplug it again; undo failed: hot-unplugging from VM 'gp-hr-1': End of file while " \
        "reading data" in caught.value.message
    assert "gpupass status proxied" in caught.value.remedy
    assert live(libvirt_conn) == before and inactive_xml(libvirt_conn, VM) == running
    run(libvirtd_uri, "assign")
    assert tablets(live(libvirt_conn)) == 1


def test_a_hot_unplug_carried_out_with_its_reply_lost_is_read_back_and_plugged_in_again(libvirtd_uri, libvirt_conn,
                                                                                         proxy, running):
    """`release --live`: the daemon unplugs the device and the reply is lost. Read back over a new connection, the
    device is gone, so the step went through: it is undone (plugged in again) and the release reported rolled back;
    the live definition holds the device again and the stored one the GPU with its claim, as before the release. The
    same release again converges."""
    run(libvirtd_uri, "assign")
    assigned, plugged = inactive_xml(libvirt_conn, VM), live(libvirt_conn)
    assert tablets(plugged) == 1 and claim_now(libvirt_conn).vm == VM
    with KvmBackendPluggingATablet(Target(uri=proxy.uri, name="proxied")) as backend:
        made = plan(backend, "release")
        proxy.drop_reply_to(DOMAIN_DETACH_DEVICE_FLAGS)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, made)
    assert proxy.dropped.is_set()
    assert isinstance(caught.value.__cause__, ConnectionFailed), caught.value.__cause__
    assert caught.value.rolled_back is True, caught.value.message
    assert "the failed step had gone through and was undone; the VM is as it was" in caught.value.message
    assert tablets(live(libvirt_conn)) == 1 and inactive_xml(libvirt_conn, VM) == assigned
    assert claim_now(libvirt_conn).vm == VM
    run(libvirtd_uri, "release")
    assert tablets(live(libvirt_conn)) == 0 and inactive_xml(libvirt_conn, VM) == running
    assert claim_now(libvirt_conn) is None


# -- a hot-unplug the guest does not grant ---------------------------------------------------------------------------
RNG = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"


class KvmBackendPluggingAPciDevice(KvmBackend):
    """The product's backend whose hot-plug steps carry a virtio RNG: a PCI device, like a GPU, whose unplug the guest
    OS must agree to (PCIe native hot-plug); the domain here idles in its firmware, which never does."""

    def _hotplug_step(self, vm, function, attach):
        step = super()._hotplug_step(vm, function, attach)
        return records.replace(step, payload=Hotplug(vm, RNG, attach))

    @staticmethod
    def _device_in(live_xml, device_xml):
        assert device_xml == RNG
        return ET.fromstring(live_xml).find("devices/rng") is not None

    def _live_differences(self, domain, facts):
        return (), ()  # as KvmBackendPluggingATablet's


def test_a_hot_unplug_the_guest_does_not_grant_is_reported_pending_and_the_release_goes_no_further(
        libvirtd_uri, libvirt_conn, running):
    """`release --live` of a PCI device from a guest that does not let it go: libvirt asks, waits 5 s and answers
    success with the device still in the VM (libvirt 9.0.0 src/qemu/qemu_hotplug.c, qemuDomainDetachDeviceLive and
    qemuDomainWaitForDeviceRemoval). Before: gpupass then removed the GPU from the stored definition and its claim and
    reported it released while the running VM still held it. Now the live definition is read after the detach: the
    step fails saying the unplug is pending in the guest, not rolled back (QEMU cannot take the request back), and
    nothing else is changed: the stored definition and the claim stay. Once the VM is off, the release goes through."""
    with KvmBackendPluggingAPciDevice(Target(uri=libvirtd_uri, name="session")) as backend:
        execute(backend, plan(backend, "assign"))
    assigned = inactive_xml(libvirt_conn, VM)
    assert ET.fromstring(live(libvirt_conn)).find("devices/rng") is not None and claim_now(libvirt_conn).vm == VM
    with KvmBackendPluggingAPciDevice(Target(uri=libvirtd_uri, name="session")) as backend:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan(backend, "release"))
    assert caught.value.rolled_back is False, caught.value.message
    assert f"VM '{VM}' has not let go of the device: libvirt asked its guest to unplug it and stopped waiting" \
        in caught.value.message, caught.value.message
    assert "release the device in the guest OS (or shut the VM down)" in caught.value.remedy
    assert ET.fromstring(live(libvirt_conn)).find("devices/rng") is not None  # still in the running VM
    assert inactive_xml(libvirt_conn, VM) == assigned and claim_now(libvirt_conn).vm == VM
    libvirt_conn.lookupByName(VM).destroy()
    with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
        execute(backend, make_plan(backend, with_gpus(backend.inventory(), THE_GPU), ReleaseRequest(VM),
                                   default_registry()))
    assert inactive_xml(libvirt_conn, VM) == running and claim_now(libvirt_conn) is None


# -- a gpupass process killed with the undo of its hot-plug on the wire ----------------------------------------------
def killed_with_its_undo_on_the_wire(proxy, operation):
    """A real gpupass run in a process of its own: its hot-plug's reply is lost after the daemon carried it out, it
    reads the live definition back (done) and sends the undo (the opposite hot-plug), which the proxy holds while the
    process is SIGKILLed; the undo then goes on to the daemon, which carries it out for nobody."""
    from pathlib import Path

    from support.libvirt_proxy import kill_when_held, start_python

    here = Path(__file__).resolve().parent
    script = (f"import sys\nsys.path[:0] = {[str(here), str(here.parents[1])]!r}\n"
              "from gpupass.core.service import execute\nfrom gpupass.core.target import Target\n"
              "from test_kvm_hotplug_readback_libvirtd import KvmBackendPluggingATablet, plan\n"
              f"with KvmBackendPluggingATablet(Target(uri={proxy.uri!r}, name='killed')) as backend:\n"
              f"    execute(backend, plan(backend, {operation!r}))\n"
              "print('the run finished: it was not killed')\n")
    hotplug, undo = (DOMAIN_ATTACH_DEVICE_FLAGS, DOMAIN_DETACH_DEVICE_FLAGS)[::1 if operation == "assign" else -1]
    proxy.drop_reply_to(hotplug)
    proxy.hold_call_to(undo)
    kill_when_held(proxy, start_python(script))
    assert proxy.dropped.is_set()


@pytest.mark.parametrize("operation", ["assign", "release"])
def test_a_client_killed_with_the_undo_of_its_hotplug_on_the_wire_leaves_the_vm_exactly_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, running, operation):
    """`assign --live` (or `release --live`) killed (SIGKILL) with the undo of its hot-plug on the wire: the daemon
    carries the undo out, so the VM is exactly as before the command, live and stored, its claim as it was; status has
    nothing to show, and the same command again converges."""
    if operation == "release":
        run(libvirtd_uri, "assign")
    before_live, before_stored, before_claim = tablets(live(libvirt_conn)), inactive_xml(libvirt_conn, VM), \
        claim_now(libvirt_conn)
    killed_with_its_undo_on_the_wire(proxy, operation)
    assert tablets(live(libvirt_conn)) == before_live and inactive_xml(libvirt_conn, VM) == before_stored
    assert claim_now(libvirt_conn) == before_claim
    with KvmBackendPluggingATablet(Target(uri=libvirtd_uri, name="session")) as backend:
        assert backend.inventory().find_vm(VM).unfinished == ()
    run(libvirtd_uri, operation)
    assert tablets(live(libvirt_conn)) == (1 if operation == "assign" else 0)
    assert inactive_xml(libvirt_conn, VM) != running if operation == "assign" else inactive_xml(libvirt_conn, VM) == \
        running
    assert (claim_now(libvirt_conn).vm if claim_now(libvirt_conn) else None) == (VM if operation == "assign" else None)
