"""Fleet figures, run on demand: `.venv/bin/python tests/bench/bench_fleet.py [--hosts 100] [--latency-ms 20]`.

Reads N real libvirt test-driver hosts (the lab's host file, copied N times) with the KVM backend, each
libvirt request delayed by an injected latency as a remote host would be, once through `gpupass fleet`'s
gather (bounded concurrency) and once one host after another. Prints wall times and round trips.
Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it small.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.fleet import gather
from gpupass.core.target import Target


class SlowKvmBackend(KvmBackend):
    """The real KVM backend; every libvirt request waits `latency` seconds first, like a distant host."""

    latency = 0.0

    def _call(self, action, function, *args):
        time.sleep(self.latency)
        return super()._call(action, function, *args)


def make_hosts(directory: Path, count: int) -> list[str]:
    with resources.as_file(resources.files("gpupass.backends.kvm").joinpath("lab-kvm.xml")) as original:
        uris = []
        for index in range(count):
            path = directory / f"host-{index:03d}.xml"
            shutil.copyfile(original, path)
            uris.append(f"test://{path}")
    return uris


def read(uri: str):
    backend = SlowKvmBackend(Target(uri=uri))
    try:
        return backend.inventory(), backend.round_trips
    finally:
        backend.close()


def run(hosts: int, latency_ms: float, concurrency: int) -> dict[str, float]:
    SlowKvmBackend.latency = latency_ms / 1000
    with tempfile.TemporaryDirectory() as scratch:
        uris = make_hosts(Path(scratch), hosts)
        began = time.perf_counter()
        together = gather(uris, read, concurrency=concurrency, timeout=600)
        parallel = time.perf_counter() - began
        began = time.perf_counter()
        one_by_one = [read(uri) for uri in uris]
        sequential = time.perf_counter() - began
    assert all(r.facts is not None for r in together), [r.error for r in together if r.error]
    trips = sum(r.round_trips for r in together)
    assert trips == sum(t for _, t in one_by_one)
    return {"hosts": hosts, "latency_ms": latency_ms, "concurrency": concurrency, "round_trips": trips,
            "fleet_s": parallel, "sequential_s": sequential}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    figures = run(args.hosts, args.latency_ms, args.concurrency)
    print(f"fleet gpus over {figures['hosts']} hosts, {figures['latency_ms']:g} ms injected per libvirt request, "
          f"{figures['round_trips']} round trips in all")
    print(f"  gpupass fleet (concurrency {figures['concurrency']}): {figures['fleet_s']:7.2f} s")
    print(f"  one host after another:          {figures['sequential_s']:7.2f} s")
    print(f"  speed-up: {figures['sequential_s'] / figures['fleet_s']:.1f}x")


if __name__ == "__main__":
    main()
