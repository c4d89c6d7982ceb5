"""Run the gpupass CLI as a user does: a separate process, no terminal, the test's own data and config."""

import subprocess
import sys

GPUPASS = [sys.executable, "-m", "gpupass.core.cli"]


def gpupass(*args, expect=0, env=None):
    """expect=None accepts any exit code."""
    result = subprocess.run([*GPUPASS, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert expect is None or result.returncode == expect, f"exit {result.returncode}, wanted {expect}\n{result.stdout}{result.stderr}"
    return result


def killed_with_call_held(sim, call, args, env, skip=0, discard=False):
    """Run `gpupass ARGS` against the vSphere simulator in its own process, SIGKILL it while `call` waits at the
    simulator (vcsim's /gpupass/hold; the call after `skip` answered ones of that name), then let the call through
    and wait until the simulator has carried it out: a client killed with its request on the wire, which the host
    runs anyway. With `discard` the held call is dropped instead, never carried out (lost on the way)."""
    import signal
    import time

    sim.hold(call, skip=skip)
    client = subprocess.Popen([*GPUPASS, *args, "--ca-file", str(sim.ca_file)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while sim.held() != call:
            assert time.monotonic() < deadline and client.poll() is None, f"{call} never reached the simulator"
            time.sleep(0.05)
        client.send_signal(signal.SIGKILL)
        assert client.wait(30) == -signal.SIGKILL
    finally:
        sim.release(discard=discard)
    deadline = time.monotonic() + 10
    while sim.held() and time.monotonic() < deadline:
        time.sleep(0.05)


def killed_with_script_held(ep, containing, args, env, while_held=None, runs=True):
    """Run `gpupass ARGS` against the Hyper-V lab endpoint in its own process, SIGKILL it while its script holding
    `containing` waits at the endpoint (hold_next_command), call `while_held()` (e.g. to make the host fail part of
    the script), then let the script through and wait until the host has run it. `runs` False: the script never
    reaches the host (the client killed just before it sent it: between the steps before it and this one)."""
    import signal

    ep.hold_next_command(containing=containing, runs=runs)
    client = subprocess.Popen([*GPUPASS, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        assert ep.command_held.wait(60), f"the script with {containing} never reached the endpoint"
        client.send_signal(signal.SIGKILL)
        assert client.wait(30) == -signal.SIGKILL
        if while_held is not None:
            while_held()
    finally:
        ep.release_command()
    assert ep.command_done.wait(60), "the host never ran the script its killed client had sent"


class CtrlCClient:
    """`gpupass ARGS` in its own process, its stderr read as it comes, for a test that sends it Ctrl-C (SIGINT, what
    a terminal sends) while one of its steps is held at the lab endpoint and then lets the step through."""

    def __init__(self, args, env):
        import threading

        self.process = subprocess.Popen([*GPUPASS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, stdin=subprocess.DEVNULL)
        self.lines = []
        self._noticed = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self):
        for line in self.process.stderr:
            self.lines.append(line)
            if line.startswith("interrupted:"):
                self._noticed.set()

    def ctrl_c(self):
        """SIGINT, then wait until gpupass says it noticed; it must still be waiting for the step on the wire."""
        import signal

        self.process.send_signal(signal.SIGINT)
        assert self._noticed.wait(30), self.lines
        assert self.process.poll() is None, "gpupass did not wait for the step on the wire"

    def finish(self):
        """-> exit code, stdout, stderr lines, once the process ended (after the held step was let through)."""
        out = self.process.stdout.read()
        code = self.process.wait(60)
        self._reader.join(10)
        return code, out, self.lines
