"""KVM backend figures, run on demand: `.venv/bin/python tests/bench/bench_kvm.py [--repeat N]`.

Prints libvirt round trips (requests counted by the backend) and wall times for `gpus` (inventory) and
`assign` (inventory + plan + execute, which reads the host again to verify) on the shipped lab host and
on a generated test-driver host; then `gpupass --help` against `python -c pass` (the CLI's import cost).
Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it small.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from gpupass.backends.kvm import testhost
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Target


def lab_host(directory: Path) -> tuple[str, str, PciAddress]:
    path = directory / "lab-kvm.xml"
    with resources.as_file(resources.files("gpupass.backends.kvm").joinpath("lab-kvm.xml")) as original:
        shutil.copyfile(original, path)
    return f"test://{path}", "ml-train", PciAddress.parse("0000:42:00.0")


def generated_host(directory: Path, gpus: int, others: int, domains: int) -> tuple[str, str, PciAddress]:
    functions, vms = testhost.generated_host(gpus, others, domains)
    uri = testhost.write_host(directory / "generated.xml", functions, vms)
    return uri, "vm-000", PciAddress.parse("0000:10:00.0")


def measure(uri: str, vm: str, gpu: PciAddress, repeat: int) -> dict[str, float]:
    registry = default_registry()
    figures: dict[str, list[float]] = {"gpus_rt": [], "gpus_s": [], "assign_rt": [], "assign_s": []}
    for _ in range(repeat):
        with KvmBackend(Target(uri=uri)) as backend:  # a fresh open each time: its own test-driver state
            started = time.perf_counter()
            backend.inventory()
            figures["gpus_s"].append(time.perf_counter() - started)
            figures["gpus_rt"].append(backend.round_trips)
        with KvmBackend(Target(uri=uri)) as backend:
            started = time.perf_counter()
            plan = make_plan(backend, backend.inventory(), AssignmentRequest(vm, (gpu,)), registry)
            assert not plan.blocked, plan.findings
            execute(backend, plan)
            figures["assign_s"].append(time.perf_counter() - started)
            figures["assign_rt"].append(backend.round_trips)
    return {name: statistics.median(values) for name, values in figures.items()}


def median_wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--cli-runs", type=int, default=11, help="subprocess runs for the --help timing")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--others", type=int, default=200, help="other PCI functions on the generated host")
    parser.add_argument("--domains", type=int, default=100)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        hosts = {
            "lab-kvm": lab_host(directory),
            f"generated ({args.gpus} GPUs+audio, {args.others} other fns, {args.domains} VMs)":
                generated_host(directory, args.gpus, args.others, args.domains),
        }
        print(f"{'host':<58} {'gpus RT':>8} {'gpus ms':>8} {'assign RT':>10} {'assign ms':>10}")
        for name, (uri, vm, gpu) in hosts.items():
            f = measure(uri, vm, gpu, args.repeat)
            print(f"{name:<58} {f['gpus_rt']:>8.0f} {f['gpus_s'] * 1000:>8.1f} "
                  f"{f['assign_rt']:>10.0f} {f['assign_s'] * 1000:>10.1f}")

    gpupass = Path(sys.executable).with_name("gpupass")
    baseline = median_wall([sys.executable, "-c", "pass"], args.cli_runs)
    print(f"\npython -c pass        median of {args.cli_runs}: {baseline * 1000:7.1f} ms")
    if gpupass.exists():
        help_time = median_wall([str(gpupass), "--help"], args.cli_runs)
        print(f"gpupass --help        median of {args.cli_runs}: {help_time * 1000:7.1f} ms "
              f"(+{(help_time - baseline) * 1000:.1f} ms over the interpreter)")
    else:
        print(f"gpupass --help        skipped: no {gpupass} (install the package in this environment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
