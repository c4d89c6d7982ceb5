"""`lab-hyperv`: the WS-Management endpoint serving the Hyper-V lab model, run in the background.

State under ``<data dir>/lab/hyperv/``: ``lab-hyperv.json`` (the model, written after every script; the VMs'
notes carry gpupass's restore records) and ``password`` (generated, mode 600, never on a command line); the lab
target reads an older gpupass's local records from ``previous-settings.json`` there, never the user's own. The server is started and stopped by PID with gpupass.core.lab.process, so it serves every gpupass
process while it is up. Authentication: NTLM by default; ``GPUPASS_LAB_HYPERV_AUTH=basic`` at `lab up`
picks Basic (the target's URI then carries ``?transport=basic``, allowed over HTTP only on 127.0.0.1).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from gpupass.core.lab import process as labprocess
from gpupass.core.errors import UsageError
from gpupass.core.ports import LabHost
from gpupass.core.target import Secret, Target

NAME = "lab-hyperv"
USER = "Administrator"
READY = "GPUPASS-HYPERV-LAB-READY "


class HypervLab(labprocess.ServerLab, LabHost):
    name = NAME
    platform = "hyperv"
    description = ("WinRM endpoint on 127.0.0.1 serving a modelled Hyper-V host: 2x A100 80GB, a T4 behind "
                   "an RMRR, a T4 and an MI300X without host drivers; VMs ml-train, render01 (Gen 1), web01 (running), cad-ws (holds an A100), dyn-mem")

    def require(self) -> None:
        labprocess.require_modules(NAME, ("tree_sitter", "tree_sitter_powershell", "winrm"),
                                   "the Hyper-V host model parses every script with tree-sitter-powershell")

    def state_path(self, data_dir: Path) -> Path:
        return self.directory(data_dir) / "lab-hyperv.json"

    def _write_initial(self, data_dir: Path) -> None:
        from gpupass.backends.hyperv.lab.hostmodel.lab import partitioned_lab_host

        path = self.state_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(partitioned_lab_host().to_json())  # with a GPU-P GPU, so a share can be shown
        os.replace(tmp, path)
        (self.directory(data_dir) / "previous-settings.json").unlink(missing_ok=True)

    def up(self, data_dir: Path) -> str:
        auth = os.environ.get("GPUPASS_LAB_HYPERV_AUTH", "ntlm").lower()
        if auth not in ("ntlm", "basic"):
            raise UsageError(f"GPUPASS_LAB_HYPERV_AUTH={auth!r}", remedy="use ntlm or basic")
        self.require()
        if not self.state_path(data_dir).exists():
            self._write_initial(data_dir)
        self.password(data_dir)
        argv = labprocess.python_argv("gpupass.backends.hyperv.lab.server", "--auth", auth, "--user", USER,
                                      "--password-file", str(self.directory(data_dir) / "password"),
                                      "--ready", READY.strip(), "--state", str(self.state_path(data_dir)))
        running = labprocess.start(data_dir, NAME, argv, READY)
        return f"serving WinRM ({running.info.get('auth')}) at {running.info.get('url')} (pid {running.pid})"

    def status(self, data_dir: Path) -> str:
        running = labprocess.running(data_dir, NAME)
        if running is None:
            return "down (`gpupass lab up lab-hyperv` starts it)"
        return f"up at {running.info.get('url')} ({running.info.get('auth')}, pid {running.pid})"

    def target(self, data_dir: Path) -> Target:
        running = self.require_running(data_dir)
        query = "?transport=basic" if running.info.get("auth") == "basic" else ""
        return Target(uri=f"hyperv+http://{USER}@127.0.0.1:{running.info['port']}/{query}", name=NAME,
                      password=Secret(self.password(data_dir)),
                      options={"state_file": str(self.directory(data_dir) / "previous-settings.json")})

    def demo_steps(self, labs: Sequence[str]) -> list[tuple[str, str]]:
        return [("Which lab hosts could take a VM with one A100 now?", "fleet find --model A100 --all")]

    def reset(self, data_dir: Path) -> None:
        was_up = self.is_up(data_dir)
        if was_up:
            labprocess.stop(data_dir, NAME)
        self._write_initial(data_dir)
        if was_up:
            self.up(data_dir)
