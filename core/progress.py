"""Progress for waits longer than a second, on a terminal only.

Long waits (the first `lab up` builds the vSphere simulator for minutes; an ESXi host reboot; a fleet read)
say what they wait for on stderr, so the terminal does not look hung. Nothing is printed when stderr is not a
terminal (scripts, CI, --json) or when the wait ends within a second.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from typing import Iterator, TextIO

DELAY = 1.0  # seconds before anything is shown


@contextlib.contextmanager
def waiting(what: str, stream: TextIO | None = None, delay: float = DELAY) -> Iterator[None]:
    """Show `what` with a spinner and the elapsed time after `delay` seconds, until the block ends."""
    out = stream or sys.stderr
    if not _is_terminal(out):
        yield
        return
    done = threading.Event()
    began = time.monotonic()

    def spin() -> None:
        if done.wait(delay):
            return
        for frame in itertools.cycle("|/-\\"):
            out.write(f"\r{frame} {what} ({time.monotonic() - began:.0f} s)")
            out.flush()
            if done.wait(0.2):
                break
        out.write("\r" + " " * (len(what) + 12) + "\r")
        out.flush()

    spinner = threading.Thread(target=spin, daemon=True, name="gpupass-progress")
    spinner.start()
    try:
        yield
    finally:
        done.set()
        spinner.join(1)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
