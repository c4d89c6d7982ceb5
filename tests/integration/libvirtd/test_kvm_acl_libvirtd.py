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
import sys
import tempfile
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm import secretclaims  # noqa: E402
from support.cli import GPUPASS  # noqa: E402
from support.polkit import PrivatePolkit  # noqa: E402
from test_kvm_backend_libvirtd import define, inactive_xml, q35  # noqa: E402
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


# The client may write and remove secrets (a claim is made and taken back) but not look one up or read it
# (secretLookupByUsage and secretLookupByUUID check org.libvirt.api.secret.getattr, virSecretGetXMLDesc
# secret.read; secretDefineXML checks secret.write and secret.save, virSecretUndefine secret.delete: the @acl lines of
# src/remote/remote_protocol.x): gpupass makes its claim and defines the VM, then cannot read the claim back to see
# whether it is still its own.
RULES_WRITE_ONLY = """polkit.addRule(function(action, subject) {
    if (subject.user != "nobody" || action.id.indexOf("org.libvirt.api.") != 0) { return polkit.Result.NOT_HANDLED; }
    if (action.id == "org.libvirt.api.connect.search-secrets" || action.id == "org.libvirt.api.secret.getattr" ||
        action.id == "org.libvirt.api.secret.read" || action.id == "org.libvirt.api.secret.read-secure") {
        return polkit.Result.NO;
    }
    return polkit.Result.YES;
});
"""


# The same, and the client may not remove a secret either (virSecretUndefine checks org.libvirt.api.secret.delete): the
# claim it made cannot be taken back by it.
RULES_WRITE_ONLY_NO_DELETE = RULES_WRITE_ONLY.replace(
    'action.id == "org.libvirt.api.secret.read" ||',
    'action.id == "org.libvirt.api.secret.read" || action.id == "org.libvirt.api.secret.delete" ||')
assert RULES_WRITE_ONLY_NO_DELETE != RULES_WRITE_ONLY


# The client may do everything but remove a secret (virSecretUndefine checks org.libvirt.api.secret.delete).
RULES_NO_DELETE = """polkit.addRule(function(action, subject) {
    if (subject.user != "nobody" || action.id.indexOf("org.libvirt.api.") != 0) { return polkit.Result.NOT_HANDLED; }
    if (action.id == "org.libvirt.api.secret.delete") { return polkit.Result.NO; }
    return polkit.Result.YES;
});
"""


def started(rules):
    polkit = PrivatePolkit(rules).start()
    try:
        return polkit, AccessControlledLibvirtd(polkit)
    except BaseException:
        polkit.stop()
        raise


@pytest.fixture
def acl_daemon():
    polkit, daemon = started(RULES)
    try:
        yield daemon
    finally:
        daemon.stop()
        polkit.stop()


@pytest.fixture
def write_only_daemon():
    polkit, daemon = started(RULES_WRITE_ONLY)
    try:
        yield daemon
    finally:
        daemon.stop()
        polkit.stop()


@pytest.fixture
def write_only_no_delete_daemon():
    polkit, daemon = started(RULES_WRITE_ONLY_NO_DELETE)
    try:
        yield daemon
    finally:
        daemon.stop()
        polkit.stop()


@pytest.fixture
def no_delete_daemon():
    polkit, daemon = started(RULES_NO_DELETE)
    try:
        yield daemon
    finally:
        daemon.stop()
        polkit.stop()


@pytest.fixture
def home():
    """A HOME for user nobody (pytest's tmp_path is root's own, which nobody cannot enter)."""
    folder = Path(tempfile.mkdtemp(prefix="gp-acl-", dir="/tmp"))
    nobody = pwd.getpwnam("nobody")
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(home, *args, command=GPUPASS):
    """`gpupass ARGS` in a process of user nobody."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C.UTF-8",
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share")}
    nobody = pwd.getpwnam("nobody")
    # CAP_DAC_READ_SEARCH (capabilities(7): "Bypass file read permission checks and directory read and execute permission
    # checks"), kept across the uid change as an ambient capability, lets nobody's process read this checkout and its
    # .venv wherever they are (a clone under /root, mode 0700, is not readable by nobody otherwise); the daemon's access
    # control still sees user nobody: libvirt's polkit driver asks polkit about the client's uid and pid
    # (src/access/viraccessdriverpolkit.c), and polkit decides by the subject's user, never by its capabilities.
    return subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
                           *command, *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)


# The gpupass CLI with a GPU on the host: the daemon has none (no GPU, no IOMMU on this machine), so the child adds one
# to the facts the real backend reads, as test_kvm_backend_libvirtd.with_gpus does in the tests' own process;
# everything the assign writes (its claim, the VM's definition) goes to the daemon.
_CLI_WITH_A_GPU = """
import sys
sys.path[:0] = {paths!r}
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core import records
from gpupass.core.domain.pci import PciAddress
from test_kvm_backend_libvirtd import T4, with_gpus
gpu = records.replace(T4, address=PciAddress.parse({gpu!r}))
read = KvmBackend.inventory
KvmBackend.inventory = lambda self: with_gpus(read(self), gpu)
from gpupass.core.cli.main import main
main()
"""


def cli_with_a_gpu(gpu):
    here = Path(__file__).resolve().parent
    return [sys.executable, "-c", _CLI_WITH_A_GPU.format(paths=[str(here), str(here.parents[1])], gpu=gpu)]


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


def claim_on(conn, address):
    try:
        return conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, secretclaims.usage_id(address))
    except libvirt.libvirtError as exc:
        assert exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        return None


def assign_as_nobody(daemon, home, vm, gpu):
    """`gpupass assign URI VM GPU --yes --json` as user nobody; -> (exit code, its JSON document, stderr)."""
    printed = as_nobody(home, "assign", daemon.uri, vm, gpu, "--yes", "--json", command=cli_with_a_gpu(gpu))
    try:
        return printed.returncode, json.loads(printed.stdout), printed.stderr
    except ValueError:
        pytest.fail(f"exit {printed.returncode}: no JSON document\n{printed.stdout}\n{printed.stderr}")


def test_an_assign_on_a_connection_that_may_not_use_secrets_fails_naming_the_permission_and_changes_nothing(
        acl_daemon, home):
    """The client may read and define domains but libvirt's access control refuses it every secret: its claim
    (secretDefineXML, org.libvirt.api.secret.write) is refused. The assign exits 1 (README: an error, rolled back)
    with an error that says the claim was refused by the host's access control, names the permissions and how to
    grant them; the VM is exactly as it was and no claim is on the host."""
    root = libvirt.open(acl_daemon.uri)
    try:
        before = define(root, q35("gp-acl-4"))
        code, document, stderr = assign_as_nobody(acl_daemon, home, "gp-acl-4", "0000:49:00.0")
        assert code == 1, (document, stderr)
        assert document["error"] == "operation-failed" and document["rolled_back"] is True, document
        message, remedy = document["message"], document["remedy"]
        assert "claiming 0000:49:00.0" in message and "access denied" in message, message
        assert "this connection may not use libvirt secrets, which gpupass claims GPUs with" in message, message
        assert "the VM is as it was" in message, message
        assert "org.libvirt.api.secret.write" in remedy and "https://libvirt.org/acl.html" in remedy, remedy
        assert "could not take back" not in stderr, stderr  # nothing was made, so nothing to take back
        assert inactive_xml(root, "gp-acl-4") == before
        assert claim_on(root, "0000:49:00.0") is None
    finally:
        root.close()


def test_an_assign_that_may_write_its_claim_but_not_read_it_back_takes_its_change_back(write_only_daemon, home):
    """The client may define secrets and remove them but not look them up or read them: its claim and the VM's define
    go through, then it cannot read the claim back to see whether another run took it over. Before: the refusal
    said it was rolled back while the VM held the GPU and the claim was on the host. Now the define and the claim are
    taken back (the claim by the secret object its define returned: no lookup) and the error says why: exit 1,
    exactly as it was."""
    root = libvirt.open(write_only_daemon.uri)
    try:
        before = define(root, q35("gp-acl-5"))
        code, document, stderr = assign_as_nobody(write_only_daemon, home, "gp-acl-5", "0000:4a:00.0")
        assert code == 1, (document, stderr)
        assert inactive_xml(root, "gp-acl-5") == before  # what the host holds first: then what was said of it
        assert claim_on(root, "0000:4a:00.0") is None
        assert document["rolled_back"] is True, document
        assert "this connection may not use libvirt secrets, which gpupass claims GPUs with" in document["message"]
        assert "the VM is as it was" in document["message"], document
        assert "org.libvirt.api.secret.getattr" in document["remedy"], document
    finally:
        root.close()


def test_a_release_on_a_connection_that_may_not_use_secrets_is_refused_whole(acl_daemon, home):
    """The VM holds the GPU with its claim (assigned by a user who may use secrets); a release on a connection refused
    the secrets defines the VM without the GPU, then cannot remove (or even look up) the claim. Before: the refusal
    said "the VM is as it was" while the VM was released with its claim left. The release is taken back: exit 1,
    the VM exactly as before with its claim, and the error names the permission."""
    from gpupass.backends.kvm.backend import KvmBackend
    from gpupass.core.target import Target

    root = libvirt.open(acl_daemon.uri)
    try:
        define(root, q35("gp-acl-6"))
        assigned = subprocess.run([*cli_with_a_gpu("0000:4b:00.0"), "assign", acl_daemon.uri, "gp-acl-6",
                                   "0000:4b:00.0", "--yes"], capture_output=True, text=True)
        assert assigned.returncode == 0, assigned.stdout + assigned.stderr
        before, claim = inactive_xml(root, "gp-acl-6"), claim_on(root, "0000:4b:00.0")
        assert claim is not None and "bus='0x4b'" in before
        printed = as_nobody(home, "release", acl_daemon.uri, "gp-acl-6", "--yes", "--json",
                            command=cli_with_a_gpu("0000:4b:00.0"))
        assert printed.returncode == 1, printed.stdout + printed.stderr
        assert inactive_xml(root, "gp-acl-6") == before  # what the host holds first: then what was said of it
        assert claim_on(root, "0000:4b:00.0").UUIDString() == claim.UUIDString()
        document = json.loads(printed.stdout)
        assert document["rolled_back"] is True, document
        assert "this connection may not use libvirt secrets, which gpupass claims GPUs with" in document["message"]
        assert "org.libvirt.api.secret.delete" in document["remedy"], document
        # the same release by a user who may use secrets goes through
        again = subprocess.run([*cli_with_a_gpu("0000:4b:00.0"), "release", acl_daemon.uri, "gp-acl-6", "--yes"],
                               capture_output=True, text=True)
        assert again.returncode == 0, again.stdout + again.stderr
        assert claim_on(root, "0000:4b:00.0") is None
        with KvmBackend(Target(uri=acl_daemon.uri, name="root")) as backend:
            assert backend.inventory().find_vm("gp-acl-6").assigned == ()
    finally:
        root.close()


def test_an_assign_that_may_neither_read_back_nor_remove_its_claim_says_the_claim_is_left_and_status_shows_it(
        write_only_no_delete_daemon, home):
    """As above, and the client may not remove the claim it made either: the define is taken back, the claim's removal
    (by the secret object secretDefineXML returned) is refused. The error says so: not rolled back, exit 1, the claim
    named with the `virsh secret-undefine` that removes it; the VM is exactly as it was. `status`, read by a user who
    may read secrets, shows the claim on the VM with the release that removes it, and that release converges."""
    from gpupass.backends.kvm.backend import KvmBackend
    from gpupass.core.target import Target

    daemon = write_only_no_delete_daemon
    root = libvirt.open(daemon.uri)
    try:
        before = define(root, q35("gp-acl-7"))
        code, document, stderr = assign_as_nobody(daemon, home, "gp-acl-7", "0000:4f:00.0")
        assert code == 1, (document, stderr)
        assert inactive_xml(root, "gp-acl-7") == before  # what the host holds first: then what was said of it
        left = claim_on(root, "0000:4f:00.0")
        assert left is not None and secretclaims.from_xml(left.XMLDesc(0)).vm == "gp-acl-7"
        assert document["rolled_back"] is False, document
        assert "its claim on 0000:4f:00.0 could not be removed on this connection" in document["message"], document
        assert f"virsh secret-undefine {left.UUIDString()}" in document["remedy"], document
        with KvmBackend(Target(uri=daemon.uri, name="root")) as backend:
            note, = backend.inventory().find_vm("gp-acl-7").unfinished
        assert "a claim on 0000:4f:00.0 for this VM" in note and "`gpupass release HOST gp-acl-7 0000:4f:00.0`" in note
        again = subprocess.run([*cli_with_a_gpu("0000:4f:00.0"), "release", daemon.uri, "gp-acl-7", "--yes"],
                               capture_output=True, text=True)
        assert again.returncode == 0, again.stdout + again.stderr
        assert claim_on(root, "0000:4f:00.0") is None and inactive_xml(root, "gp-acl-7") == before
    finally:
        root.close()


def test_a_release_on_a_connection_that_may_not_remove_its_claim_is_taken_back_whole(no_delete_daemon, home):
    """The VM holds the GPU with its claim; a release on a connection that may read the claim but not remove it
    defines the VM without the GPU, then its claim's removal (virSecretUndefine) is refused. Before: that refusal said
    "rolled back" about a step whose define had gone through, so the VM was reported as it was while it was released
    with its claim left. Now the release is taken back: exit 1, the VM exactly as before with its claim, and the error
    names the permission."""
    daemon = no_delete_daemon
    root = libvirt.open(daemon.uri)
    try:
        define(root, q35("gp-acl-8"))
        assigned = subprocess.run([*cli_with_a_gpu("0000:4f:00.0"), "assign", daemon.uri, "gp-acl-8", "0000:4f:00.0",
                                   "--yes"], capture_output=True, text=True)
        assert assigned.returncode == 0, assigned.stdout + assigned.stderr
        before, claim = inactive_xml(root, "gp-acl-8"), claim_on(root, "0000:4f:00.0")
        assert claim is not None and "bus='0x4f'" in before
        printed = as_nobody(home, "release", daemon.uri, "gp-acl-8", "--yes", "--json",
                            command=cli_with_a_gpu("0000:4f:00.0"))
        assert printed.returncode == 1, printed.stdout + printed.stderr
        assert inactive_xml(root, "gp-acl-8") == before  # what the host holds first: then what was said of it
        assert claim_on(root, "0000:4f:00.0").UUIDString() == claim.UUIDString()
        document = json.loads(printed.stdout)
        assert document["rolled_back"] is True and "the VM is as it was" in document["message"], document
        assert "org.libvirt.api.secret.delete" in document["remedy"], document
        again = subprocess.run([*cli_with_a_gpu("0000:4f:00.0"), "release", daemon.uri, "gp-acl-8", "--yes"],
                               capture_output=True, text=True)
        assert again.returncode == 0, again.stdout + again.stderr
        assert claim_on(root, "0000:4f:00.0") is None and "bus='0x4f'" not in inactive_xml(root, "gp-acl-8")
    finally:
        root.close()
