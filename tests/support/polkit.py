"""A polkit of the test's own for a libvirtd started by the suite: a D-Bus system bus of its own (dbus-daemon with
the test's config, on a socket in a temporary folder) and polkitd on that bus, in a mount namespace of its own where
the test's rules and action definitions are bind-mounted over /etc/polkit-1/rules.d, /usr/share/polkit-1/rules.d and
/usr/share/polkit-1/actions (polkitd reads only those fixed folders). The machine's polkit configuration is neither
read nor changed, and nothing listens on a network. Needs root (unshare --mount, mount --bind) and Debian's polkitd
and dbus-daemon packages (.ci/bootstrap --test installs them).

Why each piece (polkit 122, as Debian 12 ships it):
* polkitd answers CheckAuthorization with details only for "trusted callers (e.g. uid 0 or an action owner)" -- its
  own refusal, seen in libvirtd's log when the daemon is not root -- and an action's owners are named by the
  `org.freedesktop.policykit.owner` annotation (polkit(8), "DECLARING ACTIONS"); the suite's libvirtd runs as
  `nobody`, so every action here names `unix-user:nobody` as its owner.
* An action that is not registered is an error ("Action ... is not registered"), never a rule's to decide: each
  libvirt action the test uses is declared here, as libvirt names them (src/access/viraccessdriverpolkit.c,
  virAccessDriverPolkitFormatAction: "org.libvirt.api.<type>.<permission>", `_` written `-`; the permissions are
  src/access/viraccessperm.c's).
* "uid 0, root, is _always_ authorized for anything" (src/polkitbackend/polkitbackendinteractiveauthority.c,
  check_authorization_sync): a rule can refuse only a client that is not root.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# libvirt's permissions (src/access/viraccessperm.c) of the object types gpupass's KVM backend reads and writes.
LIBVIRT_PERMISSIONS = {
    "connect": "getattr read write search_domains search_networks search_storage_pools search_node_devices "
               "search_interfaces search_secrets search_nwfilters search_nwfilter_bindings detect_storage_pools "
               "pm_control interface_transaction",
    "domain": "getattr read write read_secure start stop reset save delete migrate snapshot suspend hibernate "
              "core_dump pm_control init_control inject_nmi send_input send_signal fs_trim fs_freeze block_read "
              "block_write mem_read open_graphics open_device screenshot open_namespace set_time set_password",
    "node-device": "getattr read write start stop detach",
    "secret": "getattr read write read_secure save delete",
}

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def libvirt_actions(owner: str) -> str:
    """A polkit action file declaring libvirt's actions, each owned by `owner` (a unix user name) and refused by
    default: the rules decide."""
    actions = []
    for kind, permissions in LIBVIRT_PERMISSIONS.items():
        for permission in permissions.split():
            name = f"org.libvirt.api.{kind}.{permission.replace('_', '-')}"
            actions.append(
                f'  <action id="{name}"><description>{name}</description><message>{name}</message>'
                f'<annotate key="org.freedesktop.policykit.owner">unix-user:{owner}</annotate>'
                "<defaults><allow_any>no</allow_any><allow_inactive>no</allow_inactive>"
                "<allow_active>no</allow_active></defaults></action>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit '
            'Policy Configuration 1.0//EN" "http://www.freedesktop.org/standards/PolicyKit/1/policyconfig.dtd">\n'
            "<policyconfig>\n" + "\n".join(actions) + "\n</policyconfig>\n")


class PrivatePolkit:
    """`rules`: the JavaScript of one polkit rules file; `owner`: the user the daemon asking polkit runs as."""

    POLKITD = "/usr/lib/polkit-1/polkitd"

    def __init__(self, rules: str, owner: str = "nobody") -> None:
        self.rules, self.owner = rules, owner
        self.folder = Path(tempfile.mkdtemp(prefix="gp-pk-", dir="/tmp"))
        self.bus: subprocess.Popen[bytes] | None = None
        self.polkitd: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The value of DBUS_SYSTEM_BUS_ADDRESS for the daemon that asks this polkit."""
        return f"unix:path={self.folder / 'bus'}"

    def start(self) -> PrivatePolkit:
        for tool in ("dbus-daemon", "unshare", self.POLKITD):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing: apt-get install dbus-daemon polkitd util-linux "
                                   "(bash .ci/bootstrap --test)")
        rules, actions = self.folder / "rules", self.folder / "actions"
        for folder in (self.folder, rules, actions):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o755)  # polkitd reads them as the polkitd user
        (rules / "10-gpupass-test.rules").write_text(self.rules)
        (actions / "org.libvirt.api.policy").write_text(libvirt_actions(self.owner))
        (self.folder / "bus.conf").write_text(_BUS_CONFIG.format(socket=self.folder / "bus"))
        try:
            self.bus = subprocess.Popen(["dbus-daemon", f"--config-file={self.folder / 'bus.conf'}", "--nofork",
                                         "--nopidfile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._wait(lambda: (self.folder / "bus").exists(), "the bus socket")
            log = open(self.folder / "polkitd.log", "wb")
            mounts = " && ".join(f"mount --bind {source} {target}" for source, target in (
                (rules, "/etc/polkit-1/rules.d"), (rules, "/usr/share/polkit-1/rules.d"),
                (actions, "/usr/share/polkit-1/actions")))
            self.polkitd = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && exec {self.POLKITD}"],
                env={"DBUS_SYSTEM_BUS_ADDRESS": self.address, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self._wait(lambda: b"Acquired the name org.freedesktop.PolicyKit1" in self.log(), "polkitd on the bus")
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> bytes:
        path = self.folder / "polkitd.log"
        return path.read_bytes() if path.exists() else b""

    def _wait(self, ready, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for process in (self.bus, self.polkitd):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{what}: a process exited ({process.args}): {self.log()[-2000:]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up within {timeout:g}s: {self.log()[-2000:]!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in (self.polkitd, self.bus):  # by their PIDs, which this object started
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivatePolkit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
