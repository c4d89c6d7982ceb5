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
        with pytest.raises(ConnectionFailed) as caught:  # the call finds the socket broken
            backend.inventory()
        cause = caught.value.__cause__
        assert isinstance(cause, libvirt.libvirtError) and cause.get_error_domain() == libvirt.VIR_FROM_RPC
        assert cause.get_error_code() in {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR}
        assert "the connection to libvirtd was lost" in caught.value.remedy
        # The lost connection is not used again ("client socket is closed" on every later call): the next call
        # opens a new one, which the dead daemon refuses.
        with pytest.raises(ConnectionFailed) as caught:
            backend.inventory()
        assert caught.value.message.startswith("connecting to doomed")
        assert "check that libvirtd runs on the host" in caught.value.remedy
    finally:
        daemon.stop()
