"""Progress shows only on a terminal and only for waits longer than a second."""

import io
import time

import pytest

from gpupass.core import progress
from gpupass.core.progress import waiting


@pytest.fixture(autouse=True)
def not_quiet(monkeypatch):
    """Progress on (a `gpupass --json` run in this process before, a test's, turns it off for the process)."""
    monkeypatch.setattr(progress, "_quiet", False)


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


def test_nothing_under_json():
    out = Terminal()
    progress.quiet()
    with waiting("long", stream=out, delay=0.01):
        time.sleep(0.2)
    assert out.getvalue() == ""


def test_a_wait_inside_another_shows_on_the_same_spinner_and_the_outer_text_comes_back():
    out = Terminal()
    with waiting("outer step", stream=out, delay=0.01):
        time.sleep(0.3)
        with waiting("the host is still running the script", stream=out, delay=0.01):
            time.sleep(0.5)
        time.sleep(0.5)
    text = out.getvalue()
    assert "the host is still running the script" in text
    assert text.rfind("outer step") > text.find("the host is still running the script")   # back to the outer text


def test_a_name_with_terminal_escapes_is_shown_escaped():
    out = Terminal()
    with waiting("assigning to VM '\x1b]0;owned\x07'", stream=out, delay=0.01):
        time.sleep(0.3)
    assert "\x1b" not in out.getvalue() and "\\x1b]0;owned\\x07" in out.getvalue()
