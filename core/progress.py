"""Progress for waits longer than a second, on a terminal only.

Long waits (the first `lab up` builds the vSphere simulator for minutes; an ESXi host reboot; a fleet read; a Hyper-V
script the host is still running) say what they wait for on stderr, so the terminal does not look hung. Nothing is
printed when stderr is not a terminal (scripts, CI), under --json (the CLI calls `quiet()`), or when the wait ends
within a second. A wait inside another (a backend's wait for its host within the CLI's wait for a step) shows on the
same line in place of the outer one's text while it lasts: one spinner, never two writing over each other.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from typing import Iterator, TextIO

from gpupass.core.cli.escape import shown

DELAY = 1.0  # seconds before anything is shown

_quiet = False
# The texts of the waits now shown by the one spinner, innermost last (guarded by _lock).
_texts: list[list[str]] = []
_lock = threading.Lock()


def quiet(on: bool = True) -> None:
    """No progress at all from now on (`--json`: a command whose output is for a program)."""
    global _quiet
    _quiet = on


@contextlib.contextmanager
def waiting(what: str, stream: TextIO | None = None, delay: float = DELAY) -> Iterator[None]:
    """Show `what` with a spinner and the elapsed time after `delay` seconds, until the block ends."""
    out = stream or sys.stderr
    if _quiet or not _is_terminal(out):
        yield
        return
    entry = [what]
    with _lock:
        nested = bool(_texts)
        _texts.append(entry)
    if nested:  # the spinner already running shows this text while the inner wait lasts
        try:
            yield
        finally:
            with _lock:
                _texts[:] = [t for t in _texts if t is not entry]
        return
    done = threading.Event()
    began = time.monotonic()

    def spin() -> None:
        if done.wait(delay):
            return
        width = 0
        for frame in itertools.cycle("|/-\\"):
            with _lock:
                text = _texts[-1][0] if _texts else what
            text = shown(text)   # names from a host in it (a VM's) must not act on the terminal
            line = f"{frame} {text} ({time.monotonic() - began:.0f} s)"
            out.write("\r" + line.ljust(width))
            width = max(width, len(line))
            out.flush()
            if done.wait(0.2):
                break
        out.write("\r" + " " * width + "\r")
        out.flush()

    spinner = threading.Thread(target=spin, daemon=True, name="gpupass-progress")
    spinner.start()
    try:
        yield
    finally:
        done.set()
        spinner.join(1)
        with _lock:
            _texts[:] = [t for t in _texts if t is not entry]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
