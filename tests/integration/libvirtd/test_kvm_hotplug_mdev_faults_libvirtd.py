"""The KVM hot-plug and mediated-device rows of the fault matrix (docs/faults.md) on a REAL libvirtd: what can be
injected on a machine with no VFIO, no GPU and no mdev-capable parent.

The daemon refuses both calls here, whoever sends them and whatever happened to the sender:
* a live PCI attach (virDomainAttachDeviceFlags with VIR_DOMAIN_AFFECT_LIVE) on a running domain: "host doesn't
  support passthrough of host PCI devices", VIR_ERR_CONFIG_UNSUPPORTED (libvirt src/qemu/qemu_hostdev.c,
  qemuHostdevPreparePCIDevicesCheckSupport: qemuHostdevHostSupportsPassthroughVFIO needs an IOMMU and /dev/vfio/vfio);
* defining a mediated device (virNodeDeviceDefineXML, libvirt 7.3+): the node device driver runs `mdevctl`, which
  this machine does not have ("Cannot find 'mdevctl' in path", from virExec in libvirt src/util/vircommand.c), and
  there is no mdev parent (/sys/class/mdev_bus) for it to act on anyway.

So "carried out, reply lost" cannot be produced on these calls (docs/faults.md says so). What can be, with real
components: the request lost on the way (the proxy throws it away and closes the connection, so the daemon never
sees it) -- gpupass must read the host back over a new connection and report that nothing was done, not an undo to
make by hand; and a real gpupass process killed (SIGKILL) with the call on the wire, which the daemon then refuses --
the host must be exactly as it was, with nothing for `status` to show.
"""

# The fault matrix's proxy fixture is imported below and taken as a parameter here, which ruff reads as a redefinition.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml, secretclaims  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.backends.kvm.nodedev import parse_pci_nodedev  # noqa: E402
from gpupass.core import records  # noqa: E402
from gpupass.core.domain.pci import PciAddress  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest  # noqa: E402
from gpupass.core.domain.sharing import ShareMode, ShareType, Sharing  # noqa: E402
from gpupass.core.errors import ConnectionFailed, NotSupported, OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.libvirt_proxy import (DOMAIN_ATTACH_DEVICE_FLAGS, NODE_DEVICE_DEFINE_XML, kill_when_held,  # noqa: E402
                                   start_python)
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402
from test_kvm_fault_matrix_libvirtd import proxy  # noqa: E402,F401

THE_GPU = records.replace(T4, address=PciAddress.parse("0000:4c:00.0"))  # claims of its own
GPU = str(THE_GPU.address)
VM = "gp-hm-1"
VGPU = ShareType("nvidia-222", "GRID T4-2Q", ShareMode.MDEV, available=1, max_instances=8)


def claim_now(conn):
    try:
        return conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(GPU))
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        return None


def mdevs(conn):
    return [d.name() for d in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV)]


def unfinished(uri):
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        facts = backend.inventory()
    return facts.find_vm(VM).unfinished, [n for n in facts.host.unfinished if GPU in n]


# -- hot-plug: `assign --live` on a running VM ------------------------------------------------------------------------
def plan_live(backend):
    plan = make_plan(backend, with_gpus(backend.inventory(), THE_GPU),
                     AssignmentRequest(VM, (THE_GPU.address,), AssignOptions(live=True)), default_registry())
    assert not plan.blocked, plan.findings
    assert [s.action for s in plan.steps if s.writes] == ["kvm.hotplug", "kvm.define-domain"]
    return plan


@pytest.fixture
def running(libvirt_conn):
    """VM defined and started (TCG, no disk: it idles in its firmware); -> its stored and its live definition."""
    define(libvirt_conn, q35(VM))
    domain = libvirt_conn.lookupByName(VM)
    domain.create()
    yield inactive_xml(libvirt_conn, VM), domain.XMLDesc(0)
    if domain.isActive():
        domain.destroy()
    domain.undefine()


def as_it_was(conn, running):
    stored, live = running
    domain = conn.lookupByName(VM)
    assert domain.isActive() and domain.XMLDesc(0) == live
    assert inactive_xml(conn, VM) == stored
    assert claim_now(conn) is None


def test_a_hotplug_request_lost_on_the_way_is_read_back_and_reported_not_done(libvirtd_uri, libvirt_conn, proxy,
                                                                               running):
    """The attachDeviceFlags request never reaches the daemon and the connection closes: the run cannot know from its
    call whether the device went in. It reads the VM's live definition again over a new connection, finds nothing
    attached, and reports the VM as it was (rolled back), not an undo to make by hand; the same assign again gets
    the daemon's own answer (no passthrough here), rolled back too."""
    with KvmBackend(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_live(backend)
        proxy.lose_call_to(DOMAIN_ATTACH_DEVICE_FLAGS)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert proxy.lost.is_set()
    assert isinstance(caught.value.__cause__, ConnectionFailed), caught.value.__cause__
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    assert "undo by hand" not in caught.value.message
    as_it_was(libvirt_conn, running)
    assert unfinished(libvirtd_uri) == ((), [])
    with KvmBackend(Target(uri=libvirtd_uri, name="session")) as backend:
        with pytest.raises(OperationFailed) as again:
            execute(backend, plan_live(backend))
    assert again.value.rolled_back is True and isinstance(again.value.__cause__, NotSupported)
    assert again.value.__cause__.__cause__.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    as_it_was(libvirt_conn, running)


_CHILD = """
import sys
sys.path[:0] = {paths!r}
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.service import execute
from gpupass.core.target import Target
from test_kvm_hotplug_mdev_faults_libvirtd import {planner}
with {backend}(Target(uri={uri!r}, name="killed")) as backend:
    execute(backend, {planner}(backend))
print("the run finished: it was not killed")
"""


def killed_with(proxy, procedure, planner, backend="KvmBackend", skip=0, module="test_kvm_hotplug_mdev_faults_libvirtd"):
    here = Path(__file__).resolve().parent
    script = _CHILD.format(paths=[str(here), str(here.parents[1])], uri=proxy.uri, planner=planner, backend=backend)
    script = script.replace("from test_kvm_hotplug_mdev_faults_libvirtd import", f"from {module} import")
    if backend != "KvmBackend":
        script = script.replace("from gpupass.backends.kvm.backend import KvmBackend",
                                f"from {module} import {backend}")
    proxy.hold_call_to(procedure, skip=skip)
    kill_when_held(proxy, start_python(script))


def test_a_client_killed_with_its_hotplug_on_the_wire_leaves_the_vm_exactly_as_it_was(libvirtd_uri, libvirt_conn,
                                                                                       proxy, running):
    """A real gpupass process killed (SIGKILL) with its attachDeviceFlags on the wire; the daemon then refuses it (no
    passthrough here): the VM exactly as it was, live and stored, no claim, nothing for status to show."""
    killed_with(proxy, DOMAIN_ATTACH_DEVICE_FLAGS, "plan_live")
    as_it_was(libvirt_conn, running)
    assert unfinished(libvirtd_uri) == ((), [])


# -- a mediated device gpupass creates (share assign with no free device of the type) --------------------------------
class KvmBackendWithACard(KvmBackend):
    """The real backend on the real daemon, whose facts also list a card offering VGPU with room for one device and
    none created: an assign of the share creates one. The card is one of the PCI devices the daemon lists (the
    machine's own), so the daemon knows the parent it is asked to create the device on."""

    def inventory(self):
        facts = super().inventory()
        card = records.replace(T4, address=parent_address(self))
        facts = with_gpus(facts, card)
        sharing = Sharing((VGPU,), (), one_type_at_a_time=True)
        return records.replace(facts, gpus=tuple(records.replace(g, sharing=sharing) for g in facts.gpus))


def parent_address(backend) -> PciAddress:
    conn = backend._connection()
    first = sorted(conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV), key=lambda d: d.name())[0]
    return parse_pci_nodedev(first.XMLDesc(0)).function.address


def plan_share(backend):
    plan = make_plan(backend, backend.inventory(),
                     AssignmentRequest(VM, (parent_address(backend),), AssignOptions(share=VGPU.id)),
                     default_registry())
    assert not plan.blocked, plan.findings
    # the VM records the device before its creation; a rerun finishes what that record names (mdevstate.py)
    assert [s.action for s in plan.steps if s.writes] in (["kvm.record-mdev-intent", "kvm.create-mdev",
                                                           "kvm.define-domain"], ["kvm.create-mdev", "kvm.define-domain"])
    return plan


@pytest.fixture
def stopped(libvirt_conn):
    free = define(libvirt_conn, q35(VM))
    assert mdevs(libvirt_conn) == []
    yield free
    libvirt_conn.lookupByName(VM).undefine()


def test_an_mdev_create_request_lost_on_the_way_is_read_back_and_reported_not_done(libvirtd_uri, libvirt_conn, proxy,
                                                                                    stopped):
    """The nodeDeviceDefineXML request never reaches the daemon and the connection closes: the run looks the mediated
    device up over a new connection, finds none, and reports the VM as it was (rolled back), not an undo by hand."""
    with KvmBackendWithACard(Target(uri=proxy.uri, name="proxied")) as backend:
        plan = plan_share(backend)
        proxy.lose_call_to(NODE_DEVICE_DEFINE_XML)
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    assert proxy.lost.is_set()
    assert isinstance(caught.value.__cause__, ConnectionFailed), caught.value.__cause__
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message, caught.value.message
    assert "undo by hand" not in caught.value.message
    assert mdevs(libvirt_conn) == [] and inactive_xml(libvirt_conn, VM) == stopped
    assert all(VGPU.id not in note for note in unfinished(libvirtd_uri)[0])


def test_a_client_killed_with_its_mdev_create_on_the_wire_leaves_the_host_exactly_as_it_was(
        libvirtd_uri, libvirt_conn, proxy, stopped):
    """The first window of a device's creation: a real gpupass process killed (SIGKILL) with its nodeDeviceDefineXML on
    the wire, after the run recorded the device in the VM. The daemon then refuses the define (no mdevctl, no mdev
    parent here; on a host that carries it out the device is left defined and not started): no mediated device, and
    `status` shows the VM's record with the commands that finish it or remove it. The same assign again meets the
    daemon's refusal, rolled back, the record kept; the release removes the record: the VM exactly as it was."""
    killed_with(proxy, NODE_DEVICE_DEFINE_XML, "plan_share", backend="KvmBackendWithACard")
    assert mdevs(libvirt_conn) == []
    left = inactive_xml(libvirt_conn, VM)
    (intent,) = domxml.mdev_intents(domxml.parse(left))
    assert not intent.removing and intent.type_id == VGPU.id and domxml.read_facts(left).mdevs == ()
    assert domxml.comparable(left) == domxml.comparable(stopped)  # nothing else of the VM changed
    (note,), host_notes = unfinished(libvirtd_uri)
    assert host_notes == [] and f"it was creating mediated device {intent.uuid}" in note
    assert "which is not on the host" in note and f"--share {VGPU.id}` finishes it" in note, note
    with KvmBackendWithACard(Target(uri=libvirtd_uri, name="session")) as backend:
        with pytest.raises(OperationFailed) as again:
            execute(backend, plan_share(backend))
    assert again.value.rolled_back is True and inactive_xml(libvirt_conn, VM) == left
    release_share_intent(libvirtd_uri)
    assert inactive_xml(libvirt_conn, VM) == stopped and unfinished(libvirtd_uri) == ((), [])


def release_share_intent(uri):
    """`gpupass release HOST VM CARD`: the VM holds no share of the card, so the release finishes what a stopped run
    recorded (Backend.plan_finish_release)."""
    with KvmBackendWithACard(Target(uri=uri, name="session")) as backend:
        plan = make_plan(backend, backend.inventory(), ReleaseRequest(VM, (parent_address(backend),)),
                         default_registry())
        assert [s.action for s in plan.steps if s.writes] == ["kvm.clear-mdev-intent"], plan.steps
        execute(backend, plan)
