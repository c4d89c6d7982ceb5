"""libvirt errors from a REAL libvirtd, translated by error code and domain (backends/kvm/errors.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.errors import ConnectionFailed  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from tests.support.libvirtd import UnprivilegedLibvirtd  # noqa: E402


def test_a_daemon_gone_under_an_open_connection_is_connection_failed_every_time():
    """Killed, not frozen: the socket breaks. A daemon of its own, so the session's stays up for the others."""
    daemon = UnprivilegedLibvirtd()
    try:
        backend = KvmBackend(Target(uri=daemon.uri, name="doomed", timeout=5.0))
        backend.inventory()
        os.kill(daemon.pid, signal.SIGKILL)
        time.sleep(0.2)
        seen = []
        for _ in range(2):  # the first call finds the pipe broken; the next, the socket closed
            with pytest.raises(ConnectionFailed) as caught:
                backend.inventory()
            cause = caught.value.__cause__
            assert isinstance(cause, libvirt.libvirtError)
            seen.append((cause.get_error_domain(), cause.get_error_code()))
            assert "the connection to libvirtd was lost" in caught.value.remedy
        assert all(domain == libvirt.VIR_FROM_RPC for domain, _ in seen)
        assert {code for _, code in seen} <= {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR}
    finally:
        daemon.stop()
