"""Ctrl-C during a change: the step under way is let finish, then the whole change is undone.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT comes -- possibly inside an SDK call whose
request has already gone to the host, which carries it out whatever happens to the client. A read of the host right
after may still see it "as it was" while the request is on its way, and the undo then misses it. So while the core
applies a change (service.execute), the first Ctrl-C is only noted: the step under way ends (every call is bounded by
the host's timeout) and the core then undoes every step it made, knowing exactly which. A second Ctrl-C while a step is
still under way raises KeyboardInterrupt at once (the admin will not wait): the core then reads the host again and
reports what it finds, as after a lost reply. While the core undoes, Ctrl-C is only noted: an undo stopped half-way
would leave the host neither as it was nor changed.

Only the main thread receives signals, and only the default handler is replaced (a program embedding gpupass that
chose its own keeps it); anywhere else an interrupt is a KeyboardInterrupt as before, which the core handles the
second way.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Callable, Iterator

Notice = Callable[[str], None]


class InterruptGuard:
    """What the Ctrl-C handler knows while a change is applied; execute() sets `in_step` and `undoing`."""

    def __init__(self, notice: Notice | None) -> None:
        self.pending = False   # a Ctrl-C came: the change is to be undone at the end of the step under way
        self.in_step = False   # a write step is under way (a second Ctrl-C stops waiting for it)
        self.undoing = False   # the change is being undone (every Ctrl-C is only noted)
        self._notice = notice

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending and self.in_step and not self.undoing:
            self._say("interrupted again: no longer waiting for the step under way; reading the host to undo what "
                      "it shows")
            raise KeyboardInterrupt
        first = not self.pending
        self.pending = True
        if self.undoing:
            self._say("interrupted: the change is being undone; waiting for the undo to finish")
        elif first:
            self._say("interrupted: the step under way is let finish, then the change is undone (Ctrl-C again "
                      "stops waiting for the step)" if self.in_step else
                      "interrupted: the change is undone before the next step")

    def _say(self, text: str) -> None:
        if self._notice is not None:
            self._notice(text)


@contextlib.contextmanager
def held_interrupts(notice: Notice | None = None) -> Iterator[InterruptGuard]:
    """Ctrl-C noted, not raised, for the block (see the module's docstring); `notice` is told what happens (from the
    signal handler: it should write with os.write, not through a buffered stream the interrupted code may be using)."""
    guard = InterruptGuard(notice)
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield guard
        return
    signal.signal(signal.SIGINT, guard.handle)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
