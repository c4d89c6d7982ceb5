"""Start and stop a lab host's server in the background: 127.0.0.1 only, tracked and stopped by PID."""

from __future__ import annotations

import json
import select
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpupass.core.errors import OperationFailed


@dataclass(frozen=True)
class Running:
    pid: int
    info: dict[str, Any]


def _state_file(data_dir: Path, name: str) -> Path:
    return data_dir / "lab" / f"{name}.server.json"


def running(data_dir: Path, name: str) -> Running | None:
    """The lab server's record if its process is still alive, else None (a stale record is removed)."""
    path = _state_file(data_dir, name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(record.get("pid", 0))
    if pid > 0 and _alive(pid, record.get("marker", "")):
        return Running(pid, record.get("info", {}))
    path.unlink(missing_ok=True)
    return None


def _alive(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie is dead; a PID reused by another program is not ours.
    return ") Z " not in stat and marker in cmdline


def start(data_dir: Path, name: str, argv: list[str], ready_prefix: str, timeout: float = 60.0,
          env: dict[str, str] | None = None) -> Running:
    """Run argv detached; it must print one line `ready_prefix{json}` on stdout once it serves."""
    already = running(data_dir, name)
    if already is not None:
        return already
    log_path = data_dir / "lab" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    assert process.stdout is not None
    while time.monotonic() < deadline:
        # A server that hangs before its first line would hold readline forever: wait for output within the deadline.
        if not select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith(ready_prefix):
            info = json.loads(line[len(ready_prefix):])
            break
    if info is None:
        process.kill()
        process.wait()
        raise OperationFailed(
            f"lab server {name} did not start: " + log_path.read_text()[-2000:],
            remedy=f"see {log_path}",
            rolled_back=True,  # the server process was killed: nothing of it is left
        )
    # The server keeps running after we exit; its stdout is no longer read, so it must not write to it.
    process.stdout.close()
    marker = argv[-1] if argv else ""
    record = {"pid": process.pid, "marker": marker, "info": info, "argv": argv}
    _state_file(data_dir, name).write_text(json.dumps(record, indent=2))
    return Running(process.pid, info)


def stop(data_dir: Path, name: str, timeout: float = 10.0) -> bool:
    current = running(data_dir, name)
    if current is None:
        return False
    os.kill(current.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(current.pid, ""):
        time.sleep(0.05)
    if _alive(current.pid, ""):
        os.kill(current.pid, signal.SIGKILL)
    _state_file(data_dir, name).unlink(missing_ok=True)
    return True


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def require_modules(lab: str, modules: tuple[str, ...], why: str) -> None:
    """A lab server that needs Python modules the base install lacks: a clear error, not its traceback."""
    import importlib.util

    from gpupass.core.errors import BackendUnavailable

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"{lab} needs the Python module(s) {', '.join(missing)} ({why}), which are not "
                                 "installed", remedy="pip install 'gpupass[lab]' (bash .ci/bootstrap installs it)")


class ServerLab:
    """Mixin for lab hosts served by a background process: a state folder, a generated password, PID control.

    Subclasses set `name` and implement `up`, `target` and `reset` (see backends/esxi/lab/host.py).
    """

    name: str
    has_server = True

    def directory(self, data_dir: Path) -> Path:
        return data_dir / "lab" / self.name.removeprefix("lab-")

    def password(self, data_dir: Path) -> str:
        """The lab's password: generated once, owner-only, passed to the server by file, never on a command line."""
        import secrets

        path = self.directory(data_dir) / "password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("Lab-" + secrets.token_urlsafe(18))
        return path.read_text().strip()

    def running(self, data_dir: Path) -> Running | None:
        return running(data_dir, self.name)

    def require_running(self, data_dir: Path) -> Running:
        from gpupass.core.errors import ConnectionFailed

        current = self.running(data_dir)
        if current is None:
            raise ConnectionFailed(f"{self.name} is not running", remedy=f"start it: gpupass lab up {self.name}")
        return current

    def down(self, data_dir: Path) -> str:
        return "stopped" if stop(data_dir, self.name) else "was not running"

    def is_up(self, data_dir: Path) -> bool:
        return self.running(data_dir) is not None
