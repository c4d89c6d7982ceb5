"""Faults on a REAL libvirtd during an assign: the daemon frozen (SIGSTOP) while gpupass writes, then thawed.

gpupass gives up after the host's timeout, reads the VM again (frozen: it cannot), and says the outcome is
not known instead of claiming a rollback. The daemon, thawed, then carries out the request that was waiting
in its socket: the definition with the GPU, after the claim gpupass made first (a libvirt secret); the VM is
assigned with its claim, and running the same assign again has nothing to do.
"""

from __future__ import annotations

import time

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml, secretclaims  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest  # noqa: E402
from gpupass.core.errors import OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.frozen_endpoint import freeze, thaw  # noqa: E402
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402


def plan_for(backend, vm):
    return make_plan(backend, with_gpus(backend.inventory(), T4), AssignmentRequest(vm, (T4.address,)),
                     default_registry())


def release(uri, vm):
    """Leave the daemon's GPU free for the next test (claims are host-wide, unlike the domains' names)."""
    with KvmBackend(Target(uri=uri, name="session")) as backend:
        execute(backend, make_plan(backend, with_gpus(backend.inventory(), T4), ReleaseRequest(vm),
                                   default_registry()))
        assert backend.read_back(vm, ()).assigned == ()


def test_a_daemon_frozen_mid_assign_is_reported_as_unknown_and_a_rerun_converges(libvirtd_daemon, libvirt_conn):
    define(libvirt_conn, q35("gp-frozen"))
    backend = KvmBackend(Target(uri=libvirtd_daemon.uri, name="frozen-session", timeout=1.0))
    plan = plan_for(backend, "gp-frozen")
    define_now = backend._define

    def freeze_then_define(xml, action):  # the fault's timing: the daemon stops just before the first write
        freeze(libvirtd_daemon.pid)
        return define_now(xml, action)

    backend._define = freeze_then_define
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    finally:
        thaw(libvirtd_daemon.pid)
    assert caught.value.rolled_back is False
    assert "did not answer within 1s" in caught.value.message and "could not be read again" in caught.value.message
    backend.close()

    deadline = time.monotonic() + 10  # the thawed daemon serves the waiting request when it gets to it
    while "bus='0x41'" not in inactive_xml(libvirt_conn, "gp-frozen") and time.monotonic() < deadline:
        time.sleep(0.05)
    with KvmBackend(Target(uri=libvirtd_daemon.uri, name="session")) as again:
        # The thawed daemon carried out the define that was waiting, after the claim (a libvirt secret,
        # backends/kvm/secretclaims.py) this run had made first: the VM is "after", with its claim.
        vm = again.inventory().find_vm("gp-frozen")
        assert vm.assigned == (T4.address,) and vm.unfinished == ()
        claim = secretclaims.from_xml(libvirt_conn.secretLookupByUsage(
            libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(str(T4.address))).XMLDesc(0))
        assert claim is not None and claim.vm == "gp-frozen"
        rerun = plan_for(again, "gp-frozen")
        assert rerun.steps == ()  # the same assign again converges: nothing left to do
        execute(again, rerun)
    stored = inactive_xml(libvirt_conn, "gp-frozen")
    assert [a for _, a in domxml.pci_hostdevs(domxml.parse(stored))] == [T4.address]
    release(libvirtd_daemon.uri, "gp-frozen")
