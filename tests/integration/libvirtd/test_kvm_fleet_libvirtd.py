"""A fleet read of REAL libvirtd hosts: the pool's workers make the libvirt calls themselves, each still bounded by
its host's timeout (core/callbounds.py), and a host that stops answering in the middle of its read is one row naming
the call, within that timeout, while the fleet goes on.

A stalled host is the proxy of tests/support/libvirt_proxy.py withholding the daemon's reply to one call: no sleep
decides anything here (the pool's own deadline is far longer than the host's timeout, so only the call's bound can
end the wait in time)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.backend import KvmBackend  # noqa: E402
from gpupass.core.fleet import gather  # noqa: E402
from gpupass.core.target import Target  # noqa: E402
from support.libvirt_proxy import DOMAIN_GET_XML_DESC, LibvirtProxy  # noqa: E402
from test_kvm_backend_libvirtd import define, q35  # noqa: E402

VM = "gp-fleet-1"


@pytest.fixture
def proxy(libvirtd_daemon):
    directory = Path(tempfile.mkdtemp(prefix="gp-fl-", dir="/tmp"))  # UNIX socket paths must stay short
    running = LibvirtProxy(libvirtd_daemon.socket_path, directory / "sock")
    yield running
    running.close()
    directory.rmdir()


def reader(timeout: float, seen_threads: list[set[str]], before: frozenset[threading.Thread] = frozenset()):
    """-> a fleet's read of a URI; each read adds the names of the threads started since `before` to seen_threads
    (other tests leave abandoned watchdog threads behind, blocked on their frozen hosts)."""
    def read(uri: str):
        with KvmBackend(Target(uri=uri, name=uri, timeout=timeout)) as backend:
            facts = backend.inventory()
            seen_threads.append({t.name for t in threading.enumerate() if t not in before})
            return facts, backend.round_trips
    return read


def test_a_fleet_reads_each_daemon_on_its_own_workers_and_finds_what_one_read_finds(libvirtd_uri, libvirt_conn):
    """No watchdog thread per call in a fleet (the pool bounds the calls), and the same facts as a host read alone
    (which does use the watchdog thread)."""
    define(libvirt_conn, q35(VM))
    with KvmBackend(Target(uri=libvirtd_uri, name=libvirtd_uri)) as alone:
        expected = alone.inventory()
        trips = alone.round_trips
    seen: list[set[str]] = []
    (result,) = gather([libvirtd_uri], reader(30.0, seen, frozenset(threading.enumerate())), timeout=60)
    assert result.error is None, result.error
    assert result.facts.vms == expected.vms and result.facts.gpus == expected.gpus
    assert result.round_trips == trips
    assert seen and "gpupass-libvirt-call" not in seen[0] and "gpupass-fleet-worker" in seen[0]


def test_a_host_stalling_mid_read_is_one_row_naming_the_call_within_its_own_timeout(libvirtd_uri, libvirt_conn,
                                                                                     proxy):
    define(libvirt_conn, q35(VM))
    proxy.withhold_reply_to(DOMAIN_GET_XML_DESC)  # the daemon answers everything but one domain's definition
    began = time.monotonic()
    results = gather([proxy.uri, libvirtd_uri], reader(1.0, []), timeout=60)
    waited = time.monotonic() - began
    stalled, healthy = results
    assert stalled.error is not None and stalled.error.kind == "connection-failed"
    assert "did not answer within 1s (XMLDesc); what that call did on the host is not known" in stalled.error.message
    assert healthy.error is None and healthy.facts.find_vm(VM) is not None  # the fleet went on
    assert waited < 30  # the call's own bound ended it, not the pool's 60 s (nothing else could have)
