"""Fixtures for tests that need a REAL libvirtd with the QEMU driver.

A single unprivileged session daemon (see ``tests/support/libvirtd.py``) is started
for the whole test session.  Every test in this folder is marked ``libvirtd``;
deselect them with ``pytest -m "not libvirtd"`` on hosts without libvirt.

On Debian 12 the daemon needs:
``apt-get install libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 ovmf``
(``libvirt-clients`` is handy for debugging, not needed by the tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent

try:
    from tests.support.libvirtd import UnprivilegedLibvirtd
except ImportError:  # repo root not on sys.path (plain ``pytest`` in rootdir mode)
    sys.path.insert(0, str(_HERE.parents[2]))
    from tests.support.libvirtd import UnprivilegedLibvirtd


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.libvirtd)


def _import_libvirt():
    try:
        import libvirt
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise RuntimeError(
            "the libvirt Python binding is missing: pip install 'libvirt-python' "
            "(building it needs apt-get install libvirt-dev pkg-config gcc)"
        ) from exc
    return libvirt


@pytest.fixture(scope="session")
def libvirtd_daemon():
    """The running :class:`UnprivilegedLibvirtd` (for logs and paths)."""
    daemon = UnprivilegedLibvirtd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def libvirtd_uri(libvirtd_daemon) -> str:
    """URI of the session libvirtd, e.g. ``qemu+unix:///session?socket=/tmp/.../libvirt-sock``."""
    return libvirtd_daemon.uri


@pytest.fixture
def libvirt_conn(libvirtd_uri):
    """A connection to the real daemon; domains a test leaves behind are removed."""
    libvirt = _import_libvirt()
    conn = libvirt.open(libvirtd_uri)
    before = {d.UUIDString() for d in conn.listAllDomains()}
    try:
        yield conn
    finally:
        for dom in conn.listAllDomains():
            if dom.UUIDString() in before:
                continue
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        conn.close()
