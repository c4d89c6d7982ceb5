"""The loggers of the modules every command loads (gpupass.core.lazylog) print what the standard library's would,
without importing logging until a record could be shown."""

from __future__ import annotations

import subprocess
import sys

PROBE = """\
import sys
from gpupass.core.lazylog import LazyLogger
log = LazyLogger("gpupass.test")
log.debug("debug %s", 1)
log.info("info %s", 2)
print("logging loaded after debug and info:", "logging" in sys.modules)
log.warning("warning %s", 3)
"""


def test_without_logging_configured_only_a_warning_is_shown_as_the_standard_library_shows_it():
    ours = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    stdlib = subprocess.run([sys.executable, "-c", PROBE.replace(
        "from gpupass.core.lazylog import LazyLogger\nlog = LazyLogger(\"gpupass.test\")",
        "import logging\nlog = logging.getLogger(\"gpupass.test\")")], capture_output=True, text=True, check=True)
    assert "logging loaded after debug and info: False" in ours.stdout
    assert ours.stderr == stdlib.stderr == "warning 3\n"


def test_once_logging_is_configured_every_record_reaches_it_naming_the_caller(caplog):
    import logging

    from gpupass.core.lazylog import LazyLogger

    log = LazyLogger("gpupass.test")
    with caplog.at_level(logging.DEBUG, logger="gpupass.test"):
        log.debug("debug %s", 1)
        log.info("info %s", 2)
        log.warning("warning %s", 3)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "debug 1"), ("INFO", "info 2"), ("WARNING", "warning 3")]
    assert all(r.pathname == __file__ and r.funcName == "test_once_logging_is_configured_every_record_reaches_it_naming_the_caller"
               for r in caplog.records)
