"""Write a file gpupass produces (snapshot, export) whole, private, and with a clean error when it cannot."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gpupass.core.errors import GpupassError, UsageError


def write_private(path: Path, text: str, what: str) -> None:
    """Write `text` to `path`, readable by its owner only (0600: a snapshot names hosts, VMs and users).

    A regular file (or a new one) is written beside the target and renamed over it, so a failure leaves the
    old file as it was; anything else that exists (/dev/stdout, a FIFO, /dev/full) is written in place.
    A path that cannot take the file is a usage error (exit 2); a disk that fails while writing is exit 1.
    """
    try:
        existing = path.stat().st_mode
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise _error(path, exc, what) from exc
    try:
        if existing is not None and not stat.S_ISREG(existing):
            if stat.S_ISDIR(existing):
                raise IsADirectoryError(21, os.strerror(21), str(path))
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _error(path, exc, what) from exc


def _error(path: Path, exc: OSError, what: str) -> GpupassError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return UsageError(f"cannot write {what} {path}: {reason}",
                          remedy="give -o a file in a directory that exists and that you can write to")
    return GpupassError(f"writing {what} {path} failed: {reason}; nothing was written there",
                        remedy="free some space (or fix the device), then run the command again")
