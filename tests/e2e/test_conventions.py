"""The habits admins bring from virsh, govc and Unix tools: options after the subcommand, NO_COLOR, Ctrl-C is
130, a closed pipe keeps the exit code, -v/--debug log every SDK call and never a password."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from gpupass.core import logs, paths
from gpupass.core.plugins import default_registry
from gpupass.core.target import Secret
from support.cli import GPUPASS, gpupass


def test_global_options_after_the_subcommand():
    gpupass("gpus", "lab-kvm", "--insecure")
    gpupass("gpus", "lab-kvm", "--ca-file", "/nonexistent-but-unused.pem", "-v")
    missing = gpupass("status", "lab-kvm", "--config", "/no/such/gpupass.toml", expect=2)
    assert "/no/such/gpupass.toml" in missing.stderr


def test_unknown_command_suggests_the_nearest():
    result = gpupass("gupss", expect=2)
    assert "Did you mean 'gpus'" in result.stderr


def test_no_color_strips_styles_even_when_forced():
    # The child pretends its stdout is a terminal (click keeps styles unless told the colour is off).
    env = {**os.environ, "NO_COLOR": "1"}
    script = ("import sys, click\nfrom gpupass.core.cli import main as m\n"
              "click.utils.should_strip_ansi = lambda stream=None, color=None: color is False\n"
              "m.main(['check', 'lab-kvm', 'ml-train', '02:00.0'])\n")
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert plain.returncode == 3 and "BLOCKER" in plain.stdout and "\x1b[" not in plain.stdout + plain.stderr
    del env["NO_COLOR"]
    styled = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "\x1b[" in styled.stdout  # the same run without NO_COLOR is coloured: the test can fail


def test_closed_pipe_keeps_the_exit_code_and_prints_no_traceback():
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write gets EPIPE
    result = subprocess.run([*GPUPASS, "check", "lab-kvm", "ml-train", "02:00.0"], stdout=writer,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    os.close(writer)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_ctrl_c_exits_130():
    # A host that accepts the connection and never answers: the read waits until interrupted.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        uri = f"qemu+tcp://127.0.0.1:{silent.getsockname()[1]}/system"
        process = subprocess.Popen([*GPUPASS, "fleet", "gpus", "--hosts", f"lab-kvm,{uri}", "--timeout", "60"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
        _, err = process.communicate(timeout=20)
        assert process.returncode == 130, err
        assert "Traceback" not in err
    finally:
        silent.close()


@pytest.mark.parametrize("lab", ["lab-esxi", "lab-hyperv"])
def test_debug_shows_sdk_calls_and_never_the_password(lab):
    gpupass("lab", "up", lab)
    try:
        password = default_registry().lab_host(lab).target(paths.data_dir()).password.reveal()
        assert len(password) >= 8
        result = gpupass("--debug", "gpus", lab)
        assert ("SOAP RetrievePropertiesEx" if lab == "lab-esxi" else "WinRM: ") in result.stderr
        assert password not in result.stderr + result.stdout
        after = gpupass("vms", lab, "--debug")
        assert "DEBUG" in after.stderr and password not in after.stderr + after.stdout
    finally:
        gpupass("lab", "down", lab)


def test_a_library_that_logs_a_revealed_secret_is_redacted(caplog):
    secret = Secret("hunter2-very-secret")
    secret.reveal()
    handler = logging.StreamHandler()
    handler.addFilter(logs.RedactSecrets())
    record = logging.LogRecord("urllib3", logging.DEBUG, __file__, 1, "auth=%s", ("hunter2-very-secret",), None)
    handler.filter(record)
    assert record.getMessage() == "auth=***"
