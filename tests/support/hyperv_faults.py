"""A Hyper-V write run against a frozen WS-Management endpoint: the lab endpoint in a process of its own, which the
test can freeze (SIGSTOP) as a host that stops answering, and the fault rows of docs/faults.md that freeze it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gpupass.core.errors import ConnectionFailed, OperationFailed
from support.frozen_endpoint import frozen_before_its_write as _frozen


@dataclasses.dataclass
class EndpointProcess:
    """`python -m gpupass.backends.hyperv.lab.wsman` serving a model from `state` (written back after every script)."""

    process: subprocess.Popen
    url: str
    state: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def model(self) -> Any:
        """The host model as the endpoint last wrote it."""
        from gpupass.backends.hyperv.lab.hostmodel.model import HostModel

        return HostModel.from_json(self.state.read_text(encoding="utf-8"))


@contextlib.contextmanager
def endpoint_process(tmp_path: Path, model: Any, user: str, password: str,
                     faults: Sequence[str] = ()) -> Iterator[EndpointProcess]:
    """The lab endpoint serving `model` (Basic authentication) in its own process, stopped by PID afterwards; the next
    call of each cmdlet in `faults` fails there (HostModel.inject_fault)."""
    state = tmp_path / "hyperv-lab.json"
    state.write_text(model.to_json(), encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-m", "gpupass.backends.hyperv.lab.wsman", "--state", str(state),
                                "--auth", "basic", "--user", f"{user}:{password}"]
                               + [arg for cmdlet in faults for arg in ("--fault", cmdlet)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        url = (process.stdout.readline() if process.stdout else "").strip()
        assert url.startswith("http://127.0.0.1:"), f"the endpoint did not start: {url!r}"
        yield EndpointProcess(process, url, state)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def reply_lost(marker: str) -> Callable[[Any], None]:
    """For frozen_before_its_write's `prepare`: the first script holding `marker` runs on the host and its reply is
    lost (the client sees what pywinrm's read timeout gives it, ConnectionFailed), so that a second write -- the undo
    the core makes after reading the host back -- is the one the endpoint is frozen before."""
    def prepare(backend: Any) -> None:
        send, lost = backend._run_ps, []

        def run(script: str, action: str) -> Any:
            answer = send(script, action)
            if marker in script and not lost:
                lost.append(script)
                backend._drop_shell()
                raise ConnectionFailed(f"{action}: {backend.target.label} did not answer; what the request did there "
                                       "is not known")
            return answer
        backend._run_ps = run
    return prepare


def frozen_before_its_write(endpoint: EndpointProcess, target: Any, request: Any, cmdlet: str,
                            carried_out: Callable[[], bool],
                            prepare: Callable[[Any], None] | None = None) -> OperationFailed:
    """Plan `request` on a connection with a 1 s timeout (pywinrm's read timeout is then 2 s: HypervBackend takes
    whole seconds, at least 2) and run it with the endpoint frozen just before the script holding `cmdlet` goes, then
    thaw it: gpupass must give up, fail to read the host back and say the outcome is not known. The thawed endpoint
    runs the script that was waiting; the frozen run's remote shell is deleted only after that (a real WinRM service
    ends a shell's commands with it: served first, the Delete would make this another fault, a write never run)."""
    from gpupass.backends.hyperv.backend import HypervBackend

    backend = HypervBackend(dataclasses.replace(target, timeout=1.0))
    if prepare is not None:
        prepare(backend)
    return _frozen(endpoint.pid, backend, request, carried_out,
                   sends="_run_ps", is_the_write=lambda script, action: cmdlet in script,
                   sent_after_thaw=("_drop_shell",))
