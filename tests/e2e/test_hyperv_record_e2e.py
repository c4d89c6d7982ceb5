"""The CLI against the Hyper-V lab: a GPU assigned through one spelling of the host and released through another,
after the lab was restarted on another port, gives the VM back its stop action and MMIO exactly (the restore record
travels in the VM's notes, not in a local file keyed by host:port)."""

import json
import os

from gpupass.core import paths
from gpupass.core.lab import process
from support.cli import gpupass


def _port() -> int:
    running = process.running(paths.data_dir(), "lab-hyperv")
    assert running is not None
    return int(running.info["port"])


def _vm(host: str, env=None) -> dict:
    vms = json.loads(gpupass("vms", host, "--json", env=env).stdout)["vms"]
    return next(v for v in vms if v["name"] == "ml-train")


def test_release_by_another_spelling_after_a_restart_restores_exactly():
    gpupass("lab", "up", "lab-hyperv")
    try:
        before = _vm("lab-hyperv")
        gpu = next(g["address"] for g in json.loads(gpupass("gpus", "lab-hyperv", "--json").stdout)["gpus"]
                   if g["assigned_to"] is None and "A100" in g["name"])
        gpupass("assign", f"hyperv+http://Administrator@127.0.0.1:{_port()}/", "ml-train", gpu, "--yes",
                env={**os.environ, "GPUPASS_PASSWORD": _password()})
        assert _vm("lab-hyperv")["stop_action"] == "TurnOff"
        gpupass("lab", "down", "lab-hyperv")
        gpupass("lab", "up", "lab-hyperv")       # a fresh port from the kernel (rarely the same one)
        gpupass("release", f"hyperv+http://Administrator@localhost:{_port()}", "ml-train", "--yes",
                env={**os.environ, "GPUPASS_PASSWORD": _password()})
        after = _vm("lab-hyperv")
        assert (after["stop_action"], after["mmio_window_bytes"], after["settings"]) == \
            (before["stop_action"], before["mmio_window_bytes"], before["settings"])
        assert after["assigned"] == []
    finally:
        gpupass("lab", "down", "lab-hyperv")


def _password() -> str:
    return (paths.data_dir() / "lab" / "hyperv" / "password").read_text().strip()
