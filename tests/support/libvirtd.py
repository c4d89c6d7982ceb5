"""Start and stop a real, unprivileged libvirtd (QEMU driver) for integration tests.

As root, ``libvirtd`` is always the *system* daemon (``qemu:///system``), which would
touch the machine's real state.  This harness instead runs the monolithic ``libvirtd``
as an unprivileged user (``nobody`` by default, via ``setpriv``) with ``HOME`` and all
``XDG_*`` directories inside a fresh temporary directory.  That makes it a *session*
daemon whose whole state (domain XML, NVRAM files, logs, sockets, pid files) lives in
that directory and disappears with it.

The test process may keep running as root: root can connect to the daemon's socket
(``qemu+unix:///session?socket=...``) even though the socket is owned by ``nobody``.

Usage::

    with UnprivilegedLibvirtd() as daemon:
        conn = libvirt.open(daemon.uri)
        ...

Only ``type='qemu'`` (TCG) domains can run: the daemon has no access to ``/dev/kvm``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = [
    "LibvirtdUnavailable",
    "LibvirtdStartError",
    "UnprivilegedLibvirtd",
    "QEMU_DRIVER_PATHS",
    "check_prerequisites",
]

#: Where Debian/Ubuntu (multiarch) and Fedora put the QEMU connection driver module.
QEMU_DRIVER_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
    "/usr/lib/aarch64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
    "/usr/lib64/libvirt/connection-driver/libvirt_driver_qemu.so",
    "/usr/lib/libvirt/connection-driver/libvirt_driver_qemu.so",
)

_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: Instances started and not yet stopped; stopped at interpreter exit so that a
#: forgotten instance never leaves a daemon (and its QEMU) behind.
_LIVE: set["UnprivilegedLibvirtd"] = set()


@atexit.register
def _stop_leftovers() -> None:
    for daemon in list(_LIVE):
        try:
            daemon.stop()
        except Exception:  # pragma: no cover - best effort at exit
            pass


class LibvirtdUnavailable(RuntimeError):
    """A prerequisite (binary, package, user) for the daemon is missing on this host."""


class LibvirtdStartError(RuntimeError):
    """The daemon was launched but did not come up; the message carries its log."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)


def check_prerequisites(*, need_setpriv: bool = True) -> dict[str, str]:
    """Return the paths of the needed binaries or raise :class:`LibvirtdUnavailable`.

    The message names every missing piece and the Debian package that provides it.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    wanted = [
        ("libvirtd", "libvirtd", "libvirt-daemon"),
        ("virtlogd", "virtlogd", "libvirt-daemon"),
        ("qemu", "qemu-system-x86_64", "qemu-system-x86"),
    ]
    if need_setpriv:
        wanted.append(("setpriv", "setpriv", "util-linux"))
    for key, binary, package in wanted:
        path = _which(binary)
        if path is None:
            missing.append(f"'{binary}' not found in PATH (apt-get install {package})")
        else:
            found[key] = path
    driver = next((p for p in QEMU_DRIVER_PATHS if os.path.exists(p)), None)
    if driver is None:
        missing.append(
            "libvirt QEMU connection driver (libvirt_driver_qemu.so) not found "
            "(apt-get install libvirt-daemon-driver-qemu)"
        )
    else:
        found["qemu_driver"] = driver
    if missing:
        raise LibvirtdUnavailable(
            "cannot run an unprivileged libvirtd: " + "; ".join(missing)
        )
    return found


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # Field 3 (state) follows the ")" closing the command name.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"")


def _read_proc(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


class UnprivilegedLibvirtd:
    """A session ``libvirtd`` running as an unprivileged user in a private temp dir.

    Parameters
    ----------
    user:
        Account to run the daemon as when the caller is root (default ``nobody``).
        When the caller is not root the daemon runs as the caller and ``user`` is ignored.
    start_timeout:
        Seconds to wait for the daemon's socket to accept connections.
    base_dir:
        Parent of the temporary directory (default ``/tmp``; keep it short: the
        daemon's and QEMU's UNIX socket paths must stay under 108 bytes).
    qemu_conf:
        Optional text written to ``$XDG_CONFIG_HOME/libvirt/qemu.conf``.
    start:
        Start immediately (default).  Otherwise call :meth:`start` (or use ``with``).

    Attributes (valid after :meth:`start`): ``uri``, ``socket_path``, ``tmpdir``,
    ``runtime_dir``, ``config_dir``, ``cache_dir``, ``log_path``, ``pid``,
    ``socket_seconds`` (launch until the socket accepted a connection),
    ``start_seconds`` (launch until the daemon answered an RPC).
    """

    def __init__(
        self,
        *,
        user: str = "nobody",
        start_timeout: float = 30.0,
        base_dir: str | os.PathLike[str] = "/tmp",
        qemu_conf: str | None = None,
        start: bool = True,
    ) -> None:
        self.user = user
        self.start_timeout = start_timeout
        self.base_dir = Path(base_dir)
        self.qemu_conf = qemu_conf
        self.tmpdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self.socket_seconds: float | None = None
        self._log_fh = None
        if start:
            self.start()

    # -- paths -------------------------------------------------------------------
    def _require_started(self) -> Path:
        if self.tmpdir is None:
            raise RuntimeError("UnprivilegedLibvirtd is not started")
        return self.tmpdir

    @property
    def home(self) -> Path:
        return self._require_started() / "home"

    @property
    def runtime_dir(self) -> Path:
        return self._require_started() / "run"

    @property
    def config_dir(self) -> Path:
        """``$XDG_CONFIG_HOME``; the daemon keeps its config in ``libvirt/`` below it."""
        return self.home / ".config"

    @property
    def cache_dir(self) -> Path:
        """``$XDG_CACHE_HOME``; QEMU domain logs are in ``libvirt/qemu/log/``."""
        return self.home / ".cache"

    @property
    def data_dir(self) -> Path:
        return self.home / ".local" / "share"

    @property
    def log_path(self) -> Path:
        """The daemon's stdout+stderr."""
        return self._require_started() / "libvirtd.log"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """A URI that this (root or not) process can pass to ``libvirt.open()``."""
        return f"qemu+unix:///session?socket={self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def read_log(self, limit: int = 20000) -> str:
        """The tail of the daemon's log (empty string if none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        return text[-limit:]

    def domain_log(self, name: str) -> str:
        """QEMU's log for domain ``name`` (command line, QEMU's stderr)."""
        path = self.cache_dir / "libvirt" / "qemu" / "log" / f"{name}.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "UnprivilegedLibvirtd":
        if self.process is not None:
            raise RuntimeError("UnprivilegedLibvirtd already started")
        as_root = os.geteuid() == 0
        bins = check_prerequisites(need_setpriv=as_root)

        if as_root:
            try:
                pw = pwd.getpwnam(self.user)
            except KeyError:
                raise LibvirtdUnavailable(
                    f"user {self.user!r} does not exist (needed to run libvirtd unprivileged)"
                ) from None
            uid, gid = pw.pw_uid, pw.pw_gid
            if uid == 0:
                raise LibvirtdUnavailable(
                    f"user {self.user!r} is root; as root libvirtd is the system daemon"
                )
        else:
            uid, gid = os.getuid(), os.getgid()

        self.tmpdir = Path(tempfile.mkdtemp(prefix="gpupass-lvd-", dir=self.base_dir))
        _LIVE.add(self)
        try:
            self._prepare_dirs(uid, gid)
            self._launch(bins, as_root, uid, gid)
            self._wait_for_socket()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_dirs(self, uid: int, gid: int) -> None:
        tmp = self._require_started()
        # The daemon user must be able to traverse every parent of the temp dir.
        for parent in [tmp.parent, *tmp.parent.parents]:
            if os.geteuid() == 0 and not (parent.stat().st_mode & 0o001):
                raise LibvirtdUnavailable(
                    f"{parent} is not traversable by other users; "
                    f"use a base_dir such as /tmp for the libvirtd temp dir"
                )
        sock_len = len(str(tmp / "home/.config/libvirt/qemu/lib/domain-999-x/monitor.sock"))
        if sock_len > 100:
            raise LibvirtdUnavailable(
                f"temp dir {tmp} is too long for UNIX socket paths; use a shorter base_dir"
            )
        # Readable/traversable for the daemon user; the tree below is the daemon's.
        os.chmod(tmp, 0o755)
        for sub in (
            self.home,
            self.config_dir / "libvirt",
            self.cache_dir,
            self.data_dir,
            self.runtime_dir,
        ):
            sub.mkdir(parents=True, exist_ok=True)
        if self.qemu_conf is not None:
            (self.config_dir / "libvirt" / "qemu.conf").write_text(self.qemu_conf)
        for root, dirs, files in os.walk(self.home):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), uid, gid)
        for path in (self.home, self.runtime_dir):
            os.chown(path, uid, gid)
        os.chmod(self.runtime_dir, 0o700)  # XDG_RUNTIME_DIR must be private

    def _environment(self) -> dict[str, str]:
        env = {
            "PATH": _SBIN_PATH,
            "HOME": str(self.home),
            "USER": self.user,
            "LOGNAME": self.user,
            "XDG_CONFIG_HOME": str(self.config_dir),
            "XDG_CACHE_HOME": str(self.cache_dir),
            "XDG_DATA_HOME": str(self.data_dir),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            # Untranslated messages in logs (tests compare error codes, never text).
            "LC_ALL": "C",
            "LANG": "C",
        }
        if os.geteuid() != 0:
            env["USER"] = env["LOGNAME"] = pwd.getpwuid(os.getuid()).pw_name
        return env

    def _launch(self, bins: dict[str, str], as_root: bool, uid: int, gid: int) -> None:
        argv = [bins["libvirtd"]]  # foreground: no --daemon, so we own its PID
        if as_root:
            argv = [
                bins["setpriv"],
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--",
                *argv,
            ]
        self._log_fh = open(self.log_path, "ab")
        self._t0 = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            cwd=str(self.home),
            start_new_session=True,  # no terminal signals from the test run
            close_fds=True,
        )

    def _wait_for_socket(self) -> None:
        """Wait until the socket accepts, then until the daemon answers an RPC.

        libvirtd listens before its drivers are initialised and only serves
        clients once they are; if a driver fails to initialise it exits instead.
        So a raw ``connect()`` is not enough: when the libvirt binding is
        importable, a real ``libvirt.open()`` + ``getType()`` must succeed too.
        """
        assert self.process is not None
        deadline = self._t0 + self.start_timeout
        last_error: Exception | None = None
        socket_ok = False
        while True:
            rc = self.process.poll()
            if rc is not None:
                raise LibvirtdStartError(
                    f"libvirtd exited with status {rc} before it served "
                    f"{self.socket_path}.\n--- libvirtd log ---\n{self.read_log()}"
                )
            if not socket_ok and self.socket_path.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.settimeout(1.0)
                    s.connect(str(self.socket_path))
                except OSError as exc:
                    last_error = exc
                else:
                    socket_ok = True
                    self.socket_seconds = time.monotonic() - self._t0
                finally:
                    s.close()
            if socket_ok:
                try:
                    self._probe_rpc()
                except Exception as exc:  # daemon may be exiting; loop re-checks rc
                    last_error = exc
                else:
                    self.start_seconds = time.monotonic() - self._t0
                    return
            if time.monotonic() > deadline:
                raise LibvirtdStartError(
                    f"libvirtd (pid {self.process.pid}) did not serve {self.socket_path} "
                    f"within {self.start_timeout:.0f}s (last error: {last_error!r}).\n"
                    f"--- libvirtd log ---\n{self.read_log()}"
                )
            time.sleep(0.02)

    def _probe_rpc(self) -> None:
        try:
            import libvirt
        except ImportError:  # harness usable without the binding: socket check only
            return
        conn = libvirt.open(self.uri)
        try:
            if conn.getType() != "QEMU":
                raise LibvirtdUnavailable(f"{self.uri} is not served by the QEMU driver")
        finally:
            conn.close()

    # -- a daemon that dies and comes back (the fault matrix's "endpoint killed") ---------------------------------
    def kill_daemon(self) -> None:
        """SIGKILL libvirtd itself, as a host's daemon dies under its clients; virtlogd and any QEMU stay."""
        assert self.process is not None and self.process.poll() is None, "libvirtd is not running"
        self.process.kill()
        self.process.wait(timeout=30)

    def relaunch(self) -> None:
        """Start libvirtd again on the same directories, as a host restarts it: it loads the domain definitions and
        the persistent secrets it had saved (both written to its config dir before it answers a define)."""
        assert self.process is not None and self.process.poll() is not None, "libvirtd still runs"
        as_root = os.geteuid() == 0
        bins = check_prerequisites(need_setpriv=as_root)
        if as_root:
            pw = pwd.getpwnam(self.user)
            uid, gid = pw.pw_uid, pw.pw_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        self._launch(bins, as_root, uid, gid)
        self._wait_for_socket()

    # -- stopping ----------------------------------------------------------------
    def _pidfile_pids(self) -> dict[int, str]:
        """PIDs named by pid files under the runtime dir (libvirtd, virtlogd, QEMU)."""
        found: dict[int, str] = {}
        if self.tmpdir is None or not self.runtime_dir.exists():
            return found
        for pidfile in self.runtime_dir.rglob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip() or "0")
            except (OSError, ValueError):
                continue
            if pid > 1:
                found[pid] = str(pidfile)
        return found

    def _needle(self) -> bytes:
        # Trailing slash: never match a sibling temp dir whose name extends ours.
        return (str(self._require_started()) + "/").encode()

    def _processes_referencing_tmpdir(self) -> set[int]:
        """PIDs whose command line or environment mentions our temp dir.

        virtlogd daemonizes (its parent becomes PID 1) and QEMU is a separate
        process; both inherit XDG_RUNTIME_DIR / HOME below the temp dir or carry
        socket paths below it on their command line.
        """
        if self.tmpdir is None:
            return set()
        needle = self._needle()
        me = os.getpid()
        pids: set[int] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid == me:
                continue
            if needle in _read_proc(pid, "cmdline") or needle in _read_proc(pid, "environ"):
                if _pid_alive(pid):
                    pids.add(pid)
        return pids

    def _owned_pids(self) -> set[int]:
        """Live processes that belong to this daemon instance (verified, not guessed)."""
        pids = self._processes_referencing_tmpdir()
        needle = self._needle()
        for pid in self._pidfile_pids():
            # A stale pid file may name a recycled PID: only trust it if the
            # process still points at our temp dir.
            if _pid_alive(pid) and (
                needle in _read_proc(pid, "environ") or needle in _read_proc(pid, "cmdline")
            ):
                pids.add(pid)
        return pids

    @staticmethod
    def _signal_and_wait(pids: set[int], sig: int, timeout: float) -> set[int]:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        remaining = set(pids)
        while remaining and time.monotonic() < deadline:
            remaining = {p for p in remaining if _pid_alive(p)}
            if remaining:
                time.sleep(0.02)
        return remaining

    def stop(self, *, timeout: float = 10.0) -> None:
        """Kill libvirtd, the virtlogd it spawned and any QEMU it left, then remove the temp dir.

        Safe to call more than once and on a half-started instance.
        """
        try:
            if self.tmpdir is not None:
                # Collect everything before libvirtd goes (its pid files stay, but
                # libvirtd removes some on exit).
                others = self._owned_pids()
                if self.process is not None:
                    others.discard(self.process.pid)
                if self.process is not None and self.process.poll() is None:
                    self.process.terminate()
                    try:
                        self.process.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        self.process.kill()
                        self.process.wait(timeout=timeout)
                others |= self._owned_pids()
                if others:
                    left = self._signal_and_wait(others, signal.SIGTERM, timeout)
                    if left:
                        left = self._signal_and_wait(left, signal.SIGKILL, timeout)
                    if left:
                        raise RuntimeError(f"processes {sorted(left)} survived SIGKILL")
            elif self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=timeout)
        finally:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None
            _LIVE.discard(self)

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> "UnprivilegedLibvirtd":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<UnprivilegedLibvirtd {state} pid={self.pid} dir={self.tmpdir}>"
