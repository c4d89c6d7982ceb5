"""Lab servers run detached, are found again by PID record, and are stopped by PID."""

import sys
import textwrap

import pytest

from gpupass.core.lab import process as labprocess
from gpupass.core.errors import OperationFailed

SERVER = textwrap.dedent("""
    import json, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("READY " + json.dumps({"url": "http://127.0.0.1:1/"}), flush=True)
    while True:
        time.sleep(0.1)
""")


def test_start_find_and_stop(tmp_path):
    script = tmp_path / "server-marker.py"
    script.write_text(SERVER)
    started = labprocess.start(tmp_path, "demo", [sys.executable, str(script)], "READY ")
    try:
        assert started.info == {"url": "http://127.0.0.1:1/"}
        again = labprocess.start(tmp_path, "demo", [sys.executable, str(script)], "READY ")
        assert again.pid == started.pid
        assert labprocess.running(tmp_path, "demo").pid == started.pid
    finally:
        assert labprocess.stop(tmp_path, "demo")
    assert labprocess.running(tmp_path, "demo") is None
    assert not labprocess.stop(tmp_path, "demo")


def test_a_server_that_dies_before_ready_is_reported_with_its_log(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import sys; print('bind failed', file=sys.stderr); sys.exit(1)")
    with pytest.raises(OperationFailed, match="bind failed"):
        labprocess.start(tmp_path, "broken", [sys.executable, str(script)], "READY ", timeout=10)
    assert labprocess.running(tmp_path, "broken") is None


def test_a_server_that_hangs_silently_before_ready_is_given_up_at_the_timeout_and_killed(tmp_path):
    import threading

    script = tmp_path / "silent.py"
    script.write_text("import sys, time; print('listening soon', file=sys.stderr, flush=True); time.sleep(3600)")
    outcome = []

    def start():
        try:
            labprocess.start(tmp_path, "silent", [sys.executable, str(script)], "READY ", timeout=0.5)
        except OperationFailed as failed:
            outcome.append(failed)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(30)  # far beyond the timeout: a start that waits on the silent pipe is still here
    assert not starter.is_alive(), "start() waited on a server that printed nothing, past its timeout"
    assert "lab server silent did not start" in outcome[0].message and "listening soon" in outcome[0].message
    assert outcome[0].rolled_back is True and labprocess.running(tmp_path, "silent") is None
