"""Hyper-V backend figures, run on demand: `.venv/bin/python tests/bench/bench_hyperv.py [--repeat N] [--auth ntlm|basic]`.

Against the WS-Management endpoint on 127.0.0.1 serving the lab model, prints WinRM round trips (one per
PowerShell command; each is create shell + command + receive + signal + delete on the wire) and wall times for
`gpus` (inventory) and `assign` (inventory + plan + the assign script + the verifying inventory), next to a
naive client that sends one cmdlet per shell (what a hand-written DDA script driven remotely line by line does).
Not collected by pytest (see conftest.py).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from gpupass.backends.hyperv import plugin
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.hostmodel import lab_host
from gpupass.backends.hyperv.hostmodel.lab import A100_2_LOC
from gpupass.backends.hyperv.scripts import ps_quote
from gpupass.backends.hyperv.wsman import serve
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target

USER, PASSWORD = "Administrator", "Bench-Passw0rd!"
FAILED: list[str] = []  # naive commands the host refused (reported: their time still counts)


def naive(backend: HypervBackend, what: str) -> None:
    """One cmdlet per WinRM shell, the way a line-by-line remote DDA runbook goes."""
    def run(script: str) -> None:
        code, _, _ = backend.run_ps(script, "naive")
        if code != 0:
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


def measure(auth: str, repeat: int) -> dict[str, list[float]]:
    plugins.register(plugin, name="hyperv")
    registry = plugins.default_registry()
    figures: dict[str, list[float]] = {k: [] for k in ("gpus_rt", "gpus_s", "assign_rt", "assign_s",
                                                      "naive_gpus_rt", "naive_gpus_s", "naive_assign_rt",
                                                      "naive_assign_s")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            with serve(lab_host(), auth=auth, users={USER: PASSWORD}) as ep:
                query = "?transport=basic" if auth == "basic" else ""
                target = Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/{query}", password=Secret(PASSWORD),
                                options={"state_file": f"{tmp}/s.json"})
                backend = HypervBackend(target)
                t = time.perf_counter()
                facts = backend.inventory()
                figures["gpus_s"].append(time.perf_counter() - t)
                figures["gpus_rt"].append(backend.round_trips)
                backend = HypervBackend(target)
                t = time.perf_counter()
                gpu = address_map([A100_2_LOC])[A100_2_LOC]
                execute(backend, make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (gpu,)),
                                           registry))
                figures["assign_s"].append(time.perf_counter() - t)
                figures["assign_rt"].append(backend.round_trips)
                del facts
            for what in ("gpus", "assign"):
                with serve(lab_host(), auth=auth, users={USER: PASSWORD}) as ep:
                    query = "?transport=basic" if auth == "basic" else ""
                    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/{query}",
                                                   password=Secret(PASSWORD)))
                    t = time.perf_counter()
                    naive(backend, what)
                    figures[f"naive_{what}_s"].append(time.perf_counter() - t)
                    figures[f"naive_{what}_rt"].append(backend.round_trips)
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--auth", choices=("ntlm", "basic"), default="ntlm")
    args = ap.parse_args(argv)
    f = measure(args.auth, args.repeat)
    print(f"Hyper-V over WinRM ({args.auth}, 127.0.0.1, lab model), median of {args.repeat}:")
    print(f"{'':18}{'round trips':>12}{'wall s':>10}")
    for label, key in (("gpus (gpupass)", "gpus"), ("gpus (naive)", "naive_gpus"),
                       ("assign (gpupass)", "assign"), ("assign (naive)", "naive_assign")):
        print(f"{label:18}{statistics.median(f[key + '_rt']):>12.0f}{statistics.median(f[key + '_s']):>10.3f}")
    print(f"naive commands that failed on the host: {len(set(FAILED))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
