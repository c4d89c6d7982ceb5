"""Progress shows only on a terminal and only for waits longer than a second."""

import io
import time

from gpupass.core.progress import waiting


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_long_wait_on_a_terminal_says_what_it_waits_for():
    out = Terminal()
    with waiting("building the simulator", stream=out, delay=0.05):
        time.sleep(0.4)
    assert "building the simulator" in out.getvalue()
    assert out.getvalue().endswith("\r")  # the line is cleared when the wait ends


def test_a_short_wait_prints_nothing():
    out = Terminal()
    with waiting("quick", stream=out, delay=1.0):
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_nothing_when_not_a_terminal():
    out = io.StringIO()
    with waiting("long", stream=out, delay=0.01):
        time.sleep(0.2)
    assert out.getvalue() == ""
