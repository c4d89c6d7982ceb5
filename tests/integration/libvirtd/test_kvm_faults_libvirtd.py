"""Faults on a REAL libvirtd during an assign: the daemon frozen (SIGSTOP) while gpupass writes, then thawed.

gpupass gives up after the host's timeout, reads the VM again (frozen: it cannot), and says the outcome is
not known instead of claiming a rollback. The daemon, thawed, then carries out the request that was waiting
in its socket: the claim gpupass wrote first is there, `status` lists it as unfinished, and running the same
assign again converges to the GPU on the VM once, with nothing left unfinished.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import domxml  # noqa: E402
from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.domain.request import AssignmentRequest  # noqa: E402
from gpupass.core.errors import OperationFailed  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.service import execute, make_plan  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from test_kvm_backend_libvirtd import T4, define, inactive_xml, q35, with_gpus  # noqa: E402


def plan_for(backend, vm):
    return make_plan(backend, with_gpus(backend.inventory(), T4), AssignmentRequest(vm, (T4.address,)),
                     default_registry())


def test_a_daemon_frozen_mid_assign_is_reported_as_unknown_and_a_rerun_converges(libvirtd_daemon, libvirt_conn):
    define(libvirt_conn, q35("gp-frozen"))
    backend = KvmBackend(Target(uri=libvirtd_daemon.uri, name="frozen-session", timeout=1.0))
    plan = plan_for(backend, "gp-frozen")
    define_now = backend._define

    def freeze_then_define(xml, action):  # the fault's timing: the daemon stops just before the first write
        os.kill(libvirtd_daemon.pid, signal.SIGSTOP)
        return define_now(xml, action)

    backend._define = freeze_then_define
    try:
        with pytest.raises(OperationFailed) as caught:
            execute(backend, plan)
    finally:
        os.kill(libvirtd_daemon.pid, signal.SIGCONT)
    assert caught.value.rolled_back is False
    assert "did not answer within 1s" in caught.value.message and "could not be read again" in caught.value.message
    backend.close()

    deadline = time.monotonic() + 10  # the thawed daemon serves the waiting request when it gets to it
    while not domxml.claims_of(inactive_xml(libvirt_conn, "gp-frozen"))[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    with KvmBackend(Target(uri=libvirtd_daemon.uri, name="session")) as again:
        vm = again.inventory().find_vm("gp-frozen")
        claims, _ = domxml.claims_of(inactive_xml(libvirt_conn, "gp-frozen"))
        # the thawed daemon carried out the define that was waiting: the claim (still choosing) is there,
        # and status says what it is and how it goes away
        assert [c.choosing for c in claims] == [True]
        assert len(vm.unfinished) == 1 and "stopped before its change was written" in vm.unfinished[0]
        execute(again, plan_for(again, "gp-frozen"))
        vm = again.inventory().find_vm("gp-frozen")
        assert vm.assigned == (T4.address,) and vm.unfinished == ()
    stored = inactive_xml(libvirt_conn, "gp-frozen")
    assert [a for _, a in domxml.pci_hostdevs(domxml.parse(stored))] == [T4.address]
