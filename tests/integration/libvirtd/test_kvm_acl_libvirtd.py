"""A libvirtd whose access control lets a user read domains but not list secrets (libvirt's polkit access driver,
`access_drivers = [ "polkit" ]` in libvirtd.conf: https://libvirt.org/acl.html), as a site may set up for a
read-only operator: `gpupass status` still shows the host and its VMs, and warns that gpupass's claims (libvirt
secrets) cannot be read on this connection, so a claim a stopped run left cannot be shown from it.

The daemon asks a polkit of the test's own (tests/support/polkit.py: its own D-Bus bus, polkitd in its own mount
namespace), so the machine's polkit is not touched. polkit authorizes root for anything, so the client runs as
another user: `nobody`, the suite daemon's own user, which may open its socket.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import secretclaims  # noqa: E402
from support.cli import GPUPASS  # noqa: E402
from support.polkit import PrivatePolkit  # noqa: E402
from test_kvm_backend_libvirtd import define, q35  # noqa: E402
from tests.support.libvirtd import UnprivilegedLibvirtd  # noqa: E402

# The client's user may do everything libvirt's polkit driver asks about, except list the secrets (virConnectListAll-
# Secrets checks org.libvirt.api.connect.search-secrets first: src/secret/secret_driver.c, secretConnectListAllSecrets
# -> virConnectListAllSecretsEnsureACL) or read one (org.libvirt.api.secret.*, asked once the secret is found); a refusal reaches the client as VIR_ERR_ACCESS_DENIED whatever polkit said
# (src/access/viraccessmanager.c, virAccessManagerSanitizeError).
RULES = """polkit.addRule(function(action, subject) {
    if (subject.user != "nobody" || action.id.indexOf("org.libvirt.api.") != 0) { return polkit.Result.NOT_HANDLED; }
    if (action.id == "org.libvirt.api.connect.search-secrets" || action.id.indexOf("org.libvirt.api.secret.") == 0) {
        return polkit.Result.NO;
    }
    return polkit.Result.YES;
});
"""


def claim_xml(address: str, vm: str, vm_uuid: str) -> str:
    """A gpupass claim on `address` naming `vm`, as a stopped run leaves it (backends/kvm/secretclaims.py)."""
    return secretclaims.to_xml(secretclaims.new(address, vm, vm_uuid, "t", "a stopped run", 0.0))


class AccessControlledLibvirtd(UnprivilegedLibvirtd):
    """The suite's unprivileged libvirtd, with libvirt's polkit access driver asking `polkit`."""

    def __init__(self, polkit: PrivatePolkit) -> None:
        self.polkit = polkit
        super().__init__()

    def _prepare_dirs(self, uid: int, gid: int) -> None:
        super()._prepare_dirs(uid, gid)
        (self.config_dir / "libvirt" / "libvirtd.conf").write_text('access_drivers = [ "polkit" ]\n')

    def _environment(self) -> dict[str, str]:
        return {**super()._environment(), "DBUS_SYSTEM_BUS_ADDRESS": self.polkit.address}


@pytest.fixture
def acl_daemon():
    with PrivatePolkit(RULES) as polkit:
        daemon = AccessControlledLibvirtd(polkit)
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture
def home():
    """A HOME for user nobody (pytest's tmp_path is root's own, which nobody cannot enter)."""
    folder = Path(tempfile.mkdtemp(prefix="gp-acl-", dir="/tmp"))
    nobody = pwd.getpwnam("nobody")
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(home, *args):
    """`gpupass ARGS` in a process of user nobody."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C.UTF-8",
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share")}
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--",
                           *GPUPASS, *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)


def test_a_connection_that_may_not_list_secrets_still_shows_the_host_and_says_why_claims_are_missing(
        acl_daemon, home):
    root = libvirt.open(acl_daemon.uri)  # root: polkit authorizes it for anything
    try:
        define(root, q35("gp-acl-1"))
        # what the connection may not see: a claim gpupass left on a GPU no VM holds (here, a hand-made one)
        root.secretDefineXML(claim_xml("0000:45:00.0", "gp-acl-1", root.lookupByName("gp-acl-1").UUIDString()), 0)
        printed = as_nobody(home, "status", acl_daemon.uri)
        assert printed.returncode == 0, printed.stdout + printed.stderr
        assert "no VM holds a GPU" in printed.stdout and "UNFINISHED" not in printed.stdout
        assert "cannot list gpupass's claims (libvirt secrets) on this connection" in printed.stderr, printed.stderr
        assert "access denied" in printed.stderr
        document = as_nobody(home, "vms", acl_daemon.uri, "--json")
        assert document.returncode == 0, document.stderr
        assert "gp-acl-1" in document.stdout
        # the same host from a connection that may list secrets shows the claim (it is the ACL that hides it)
        shown = subprocess.run([*GPUPASS, "status", acl_daemon.uri, "--json"], capture_output=True, text=True)
        vm, = [v for v in json.loads(shown.stdout)["vms"] if v["name"] == "gp-acl-1"]
        assert any("a claim on 0000:45:00.0" in note for note in vm["unfinished"]), vm
    finally:
        root.close()


def test_a_gpu_on_two_vms_is_still_shown_on_a_connection_that_may_not_read_the_claims(acl_daemon, home):
    """Two VMs whose definitions hold the same host device (a hand edit, or a run killed before taking its change
    back): status reads the GPU's claim to say which must give it back, and a connection refused the secrets cannot;
    it shows the host, exit 0, and warns instead of failing."""
    hostdev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x47' "
               "slot='0x00' function='0x0'/></source></hostdev>")
    root = libvirt.open(acl_daemon.uri)
    try:
        for name in ("gp-acl-2", "gp-acl-3"):
            root.defineXML(q35(name).replace("</devices>", hostdev + "</devices>"))
        root.secretDefineXML(claim_xml("0000:47:00.0", "gp-acl-2", root.lookupByName("gp-acl-2").UUIDString()), 0)
        printed = as_nobody(home, "status", acl_daemon.uri)
        assert printed.returncode == 0, printed.stdout + printed.stderr
        assert "cannot read gpupass's claim on 0000:47:00.0 on this connection" in printed.stderr, printed.stderr
    finally:
        root.close()
