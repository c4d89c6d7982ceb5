"""Run the gpupass CLI as a user does: a separate process, no terminal, the test's own data and config."""

import subprocess
import sys

GPUPASS = [sys.executable, "-m", "gpupass.core.cli"]


def gpupass(*args, expect=0, env=None):
    """expect=None accepts any exit code."""
    result = subprocess.run([*GPUPASS, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert expect is None or result.returncode == expect, f"exit {result.returncode}, wanted {expect}\n{result.stdout}{result.stderr}"
    return result
