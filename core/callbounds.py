"""Bounds on blocking calls kept by the thread pool that runs them, instead of one more thread per call.

A backend whose SDK has no timeout of its own (libvirt-python: backends/kvm/watchdog.py) bounds each call by running
it on a watchdog thread while the caller waits at most the host's timeout: one hand-over between threads per call.
In a fleet (core/fleet.py) every host is read on a pool worker that the pool already watches; there the worker makes
the call itself and announces it here (how long it may take, and the error that says so), and the pool's watcher
gives the host that error as its row once the call is overdue and puts a new worker in its place. The call is bounded
as tightly as on the watchdog thread (the host's own timeout, checked every core.fleet._TICK_S); a call that never
returns keeps one thread either way. tests/bench/bench_fleet.py measures the hand-over this saves.

This module imports nothing: the KVM backend reads it on every call.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

_this_thread = threading.local()


class CallWatch:
    """The call a pool worker is making now, if any: its deadline and how to say it was missed.

    Written by the worker, read by the pool's watcher thread; each write replaces one attribute with one tuple, so the
    watcher sees either the call or no call, never half of one."""

    def __init__(self) -> None:
        self._now: tuple[float, Callable[[], Exception]] | None = None

    def run(self, seconds: float, on_timeout: Callable[[], Exception], function: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:
        """function(*args, **kwargs) on this thread, announced as due within `seconds`; `on_timeout()` builds the
        error the pool reports if it is not back by then (its outcome on the host is then not known)."""
        self._now = (time.monotonic() + seconds, on_timeout)
        try:
            return function(*args, **kwargs)
        finally:
            self._now = None

    def overdue(self, now: float) -> Exception | None:
        """The error of the call in progress if it is past its deadline, else None."""
        call = self._now
        if call is None or now < call[0]:
            return None
        return call[1]()


def watch_of_this_thread() -> CallWatch | None:
    """The watch the pool keeps over this thread's calls, or None where no one does (the caller bounds its own)."""
    return getattr(_this_thread, "watch", None)


def watched_thread() -> CallWatch:
    """Mark this thread as one whose calls its pool watches (core/fleet.py's workers); -> the watch to check."""
    watch = _this_thread.watch = CallWatch()
    return watch
