"""Tests of the UnprivilegedLibvirtd harness itself (tests/support/libvirtd.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tests.support.libvirtd as lvd
from tests.support.libvirtd import (
    LibvirtdStartError,
    LibvirtdUnavailable,
    UnprivilegedLibvirtd,
    _pid_alive,
)

libvirt = pytest.importorskip("libvirt")

TINY = (
    "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
)


def test_missing_binary_names_the_apt_package(monkeypatch):
    real = lvd._which
    monkeypatch.setattr(lvd, "_which", lambda name: None if name == "libvirtd" else real(name))
    with pytest.raises(LibvirtdUnavailable) as info:
        UnprivilegedLibvirtd()
    assert "libvirtd" in str(info.value) and "libvirt-daemon" in str(info.value)


def test_missing_qemu_driver_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(lvd, "QEMU_DRIVER_PATHS", ("/nonexistent/libvirt_driver_qemu.so",))
    with pytest.raises(LibvirtdUnavailable, match="libvirt-daemon-driver-qemu"):
        UnprivilegedLibvirtd()


def test_daemon_that_dies_during_init_reports_its_log():
    daemon = UnprivilegedLibvirtd(qemu_conf="this is not = = valid\n", start=False)
    with pytest.raises(LibvirtdStartError) as info:
        daemon.start()
    # The error carries the daemon's own log (the config parse failure is in it).
    assert "libvirtd log" in str(info.value)
    assert "qemu.conf" in str(info.value)
    assert daemon.tmpdir is None  # cleaned up on failure


def test_stop_kills_libvirtd_virtlogd_and_qemu():
    daemon = UnprivilegedLibvirtd()
    try:
        tmpdir = daemon.tmpdir
        assert daemon.socket_path.is_socket()
        conn = libvirt.open(daemon.uri)
        # A running domain makes libvirtd spawn virtlogd and QEMU.
        conn.createXML(TINY.format(name="harness-stop"), 0)
        conn.close()
        pids = daemon._owned_pids()
        names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
        assert daemon.pid in pids
        assert "virtlogd" in names.values(), names
        assert any(n.startswith("qemu-system") for n in names.values()), names
    finally:
        daemon.stop()
    assert not tmpdir.exists()
    alive = {pid: names[pid] for pid in pids if _pid_alive(pid)}
    assert not alive, f"still alive after stop(): {alive}"
    assert not daemon.running
    daemon.stop()  # idempotent


def test_context_manager_and_daemon_user():
    with UnprivilegedLibvirtd() as daemon:
        assert daemon.running and daemon.start_seconds is not None
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if os.geteuid() == 0:
            assert uid != 0, "libvirtd must not run as root (it would be the system daemon)"
        else:
            assert uid == os.getuid()
        tmpdir = daemon.tmpdir
    assert not tmpdir.exists()
