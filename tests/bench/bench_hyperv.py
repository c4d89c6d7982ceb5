"""Hyper-V backend figures, run on demand: `.venv/bin/python tests/bench/bench_hyperv.py [--repeat N] [--auth ntlm|basic]`.

Against the WS-Management endpoint on 127.0.0.1 serving the lab model, prints PowerShell scripts (the
backend's round_trips), HTTP requests on the wire (NTLM handshake legs included) and wall times for
`gpus` (inventory), `status` on a host where a release stopped at its last Set-VM (the inventory too: it returns the
VMs' gpupass records, so seeing the stopped release costs no script of its own) and `assign` (inventory + plan + the
assign script + the VM read back), next to:

- the anchor of issue 11: one WinRM session (one pywinrm Protocol, one shell) running the same inventory
  script, the least any client needs for the same facts (goal: gpus <= 1.5x of it);
- a naive client that sends one cmdlet per shell (what a hand-written DDA runbook driven remotely line by
  line does, with pywinrm's Session.run_ps).
Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it once.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time

from gpupass.backends.hyperv import scripts
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from gpupass.backends.hyperv.scripts import ps_quote
from gpupass.backends.hyperv.lab.wsman import serve
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target

USER, PASSWORD = "Administrator", "Bench-Passw0rd!"
FAILED: list[str] = []  # naive commands the host refused (reported: their time still counts)


class HttpCounter:
    """Counts HTTP requests sent by requests (pywinrm's transport), NTLM handshake legs included."""

    count = 0

    def __enter__(self) -> "HttpCounter":
        import requests.adapters

        self._adapter = requests.adapters.HTTPAdapter
        self._send = self._adapter.send
        counter = self

        def send(adapter, request, *args, **kwargs):
            counter.count += 1
            return counter._send(adapter, request, *args, **kwargs)

        self._adapter.send = send
        return self

    def __exit__(self, *exc: object) -> None:
        self._adapter.send = self._send


def naive(backend: HypervBackend, what: str) -> None:
    """One cmdlet per WinRM shell, the way a line-by-line remote DDA runbook goes."""
    session = backend._open()

    def run(script: str) -> None:
        backend.round_trips += 1
        if session.run_ps(script).status_code != 0:
            FAILED.append(script)
    if what in ("gpus", "assign"):
        run("Get-VMHost | ConvertTo-Json -Compress")
        run("Get-VM | ConvertTo-Json -Compress")
        for vm in ("ml-train", "render01", "web01", "cad-ws", "dyn-mem"):
            run(f"Get-VMAssignableDevice -VMName {ps_quote(vm)} | ConvertTo-Json -Compress")
            run(f"Get-VMSnapshot -VMName {ps_quote(vm)} | ConvertTo-Json -Compress")
        run("Get-VMHostAssignableDevice | ConvertTo-Json -Compress")
        run("Get-PnpDevice -InstanceId 'PCI\\*' | ConvertTo-Json -Compress")
        for _ in range(3):   # per GPU: location path, survey properties, memory ranges
            run("Get-PnpDeviceProperty -InstanceId 'PCI\\*' -KeyName 'DEVPKEY_Device_LocationPaths' | ConvertTo-Json")
            run("Get-PnpDeviceProperty -InstanceId 'PCI\\*' -KeyName 'DEVPKEY_PciDevice_DeviceType' | ConvertTo-Json")
            run("Get-PnpDevice -InstanceId 'PCI\\*' | ConvertTo-Json -Compress")
    if what == "assign":
        path = ps_quote(A100_2_LOC)
        for line in ("$v=Get-VM; Set-VM -VM $v[0] -AutomaticStopAction TurnOff -HighMemoryMappedIoSpace 275414777856",
                     "Disable-PnpDevice -InstanceId 'PCI\\VEN_10DE&DEV_20B5&SUBSYS_153310DE&REV_A1\\4&1C2E9A77&0&0010' "
                     "-Confirm:$false",
                     f"Dismount-VMHostAssignableDevice -LocationPath {path} -Force",
                     f"$v=Get-VM; Add-VMAssignableDevice -LocationPath {path} -VM $v[0]",
                     "Get-VMAssignableDevice -VMName 'ml-train' | ConvertTo-Json -Compress"):
            run(line)


def anchor(target: Target) -> None:
    """One WinRM session: one shell, the inventory script, the shell closed."""
    from winrm.protocol import Protocol

    backend = HypervBackend(target)
    protocol = Protocol(backend.ex_endpoint, transport=backend.ex_transport, username=USER, password=PASSWORD,
                        server_cert_validation="ignore")
    encoded = base64.b64encode(scripts.inventory_script().encode("utf-16-le")).decode("ascii")
    shell = protocol.open_shell()
    command = protocol.run_command(shell, f"powershell -encodedcommand {encoded}")
    out, _err, code = protocol.get_command_output(shell, command)
    protocol.cleanup_command(shell, command)
    protocol.close_shell(shell)
    assert code == 0 and json.loads(out.decode().strip().splitlines()[-1])["Functions"]


def stopped_release_host():
    """The lab host where ml-train's release stopped at its last Set-VM: its device back on the host, its settings
    and record (with the release's intent) not; ml-train had TurnOff and guest-controlled cache types before."""
    model = lab_host()
    vm = model.vm("ml-train")
    vm.automatic_stop_action, vm.guest_controlled_cache_types = "TurnOff", True
    assert run_script(model, scripts.assign_script("ml-train", [A100_2_LOC], 3 * 2**30, 200 * 2**30)).exit_code == 0
    model.inject_fault("Set-VM", 2)
    assert run_script(model, scripts.release_script("ml-train", [A100_2_LOC])).exit_code == 1
    model.clear_faults()
    return model


def status(backend: HypervBackend) -> None:
    assert backend.inventory().find_vm("ml-train").unfinished    # the stopped release is seen


KEYS = ("gpus", "status", "anchor", "assign", "naive_gpus", "naive_assign")


def measure(auth: str, repeat: int) -> dict[str, list[float]]:
    registry = plugins.default_registry()
    figures: dict[str, list[float]] = {f"{k}_{m}": [] for k in KEYS for m in ("rt", "http", "s")}

    def timed(key: str, target: Target, work) -> None:
        backend = HypervBackend(target)
        with HttpCounter() as http:
            began = time.perf_counter()
            work(backend)
            backend.close()
            figures[f"{key}_s"].append(time.perf_counter() - began)
        figures[f"{key}_rt"].append(backend.round_trips)
        figures[f"{key}_http"].append(http.count)

    def assign(backend: HypervBackend) -> None:
        gpu = address_map([A100_2_LOC])[A100_2_LOC]
        execute(backend, make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (gpu,)), registry))

    def anchored(backend: HypervBackend) -> None:
        anchor(backend.target)
        backend.round_trips += 1

    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            for key, work in (("gpus", lambda b: b.inventory()), ("status", status), ("anchor", anchored),
                              ("assign", assign), ("naive_gpus", lambda b: naive(b, "gpus")),
                              ("naive_assign", lambda b: naive(b, "assign"))):
                model = stopped_release_host() if key == "status" else lab_host()   # a fresh host each time
                with serve(model, auth=auth, users={USER: PASSWORD}) as ep:
                    query = "?transport=basic" if auth == "basic" else ""
                    target = Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/{query}",
                                    password=Secret(PASSWORD), options={"state_file": f"{tmp}/{key}.json"})
                    timed(key, target, work)
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--auth", choices=("ntlm", "basic"), default="ntlm")
    args = ap.parse_args(argv)
    f = {k: statistics.median(v) for k, v in measure(args.auth, args.repeat).items()}
    print(f"Hyper-V over WinRM ({args.auth}, 127.0.0.1, lab model), median of {args.repeat}:")
    print(f"{'':34}{'scripts':>8}{'HTTP':>6}{'wall s':>9}")
    for label, key in (("gpus (gpupass)", "gpus"), ("status, a release stopped", "status"),
                       ("gpus anchor: one WinRM session", "anchor"),
                       ("gpus (naive, a shell per cmdlet)", "naive_gpus"), ("assign (gpupass)", "assign"),
                       ("assign (naive, a shell per cmdlet)", "naive_assign")):
        print(f"{label:34}{f[key + '_rt']:>8.0f}{f[key + '_http']:>6.0f}{f[key + '_s']:>9.3f}")
    print(f"gpus against one WinRM session: {f['gpus_s'] / f['anchor_s']:.2f}x wall, "
          f"{f['gpus_http'] / f['anchor_http']:.2f}x HTTP requests (goal: <= 1.5x)")
    print(f"naive commands that failed on the host: {len(set(FAILED))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
